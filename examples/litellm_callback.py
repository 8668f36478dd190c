"""Add one LiteLLM callback and every litellm call is counted: sync, async, streams, failures.

Offline: the calls use litellm's ``mock_response``, or an OpenAI-compatible test server on
127.0.0.1 (FakeOpenAI) so that real usage, cached tokens included, flows back.

    LITELLM_LOCAL_MODEL_COST_MAP=True python examples/litellm_callback.py
"""

from __future__ import annotations

import asyncio
import os

# Without this, `import litellm` downloads its price map from GitHub.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

import litellm

from quota_hooks import QuotaManager, QuotaPolicy
from quota_hooks.adapters.litellm import QuotaLogger
from quota_hooks.testing import FakeOpenAI, FakeUsage

manager = QuotaManager(QuotaPolicy(rpm=100, monthly_budget_usd=5))
litellm.callbacks = [QuotaLogger(manager=manager, default_workspace="acme")]
messages = [{"role": "user", "content": "Say hello"}]

# The workspace can also come per call, from metadata; "kind:value" tags become scopes.
litellm.completion(model="gpt-4o-mini", messages=messages, mock_response="Hello!",
                   metadata={"workspace_id": "acme", "tags": ["team:search"]}, user="u-42")

# A streamed call is recorded once, when the stream ends.
for _ in litellm.completion(model="gpt-4o-mini", messages=messages,
                            mock_response="Hello there, streaming", stream=True):
    pass

# Real usage (with 1024 cached prompt tokens) from an OpenAI-compatible server on 127.0.0.1.
fake = FakeOpenAI(FakeUsage(input_tokens=1_200, output_tokens=300, cached_tokens=1_024))
with fake.serve() as base_url:
    litellm.completion(model="openai/gpt-4o-mini", messages=messages,
                       api_base=base_url, api_key="sk-test")

# Failures are recorded too: a 429 marks the workspace rate_limited.
try:
    litellm.completion(model="gpt-4o-mini", messages=messages,
                       mock_response=litellm.RateLimitError(
                           message="slow down", llm_provider="openai", model="gpt-4o-mini"))
except litellm.RateLimitError:
    print("429 from the provider (recorded)")


async def main() -> None:
    await litellm.acompletion(model="gpt-4o-mini", messages=messages, mock_response="Hi!")
    # LiteLLM runs callbacks after the call returns; wait for them before reading totals.
    await manager.adrain()


asyncio.run(main())
manager.drain()

report = manager.status("acme")
assert report.enhanced_tracking is not None
print(f"workspace acme: {report.status.value}, {report.requests_per_minute.current} requests, "
      f"{report.tokens_per_day.current} tokens, ${report.monthly_budget_usd.current:.6f}")
for method, usage in report.enhanced_tracking.api_methods_breakdown.items():
    print(f"  {method:<18} {usage.request_count} calls, {usage.error_count} errors")
