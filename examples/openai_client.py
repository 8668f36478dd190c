"""Wrap raw OpenAI clients (sync and async) so every call is counted.

Offline: the clients talk to FakeOpenAI, an OpenAI-compatible test double, through their
``http_client``. With a real key, drop ``base_url``/``http_client`` and nothing else changes.

    python examples/openai_client.py
"""

from __future__ import annotations

import asyncio

import httpx2
from openai import AsyncOpenAI, OpenAI

from quota_hooks import QuotaManager, QuotaPolicy
from quota_hooks.adapters.openai import track_openai
from quota_hooks.testing import FakeOpenAI, FakeUsage

fake = FakeOpenAI(FakeUsage(input_tokens=42, output_tokens=17, cached_tokens=32))
manager = QuotaManager(QuotaPolicy(rpm=100))

client = track_openai(
    OpenAI(api_key="sk-test", base_url="http://fake/v1",
           http_client=httpx2.Client(transport=fake.transport())),
    workspace_id="acme",
    manager=manager,
    scopes={"team": "search"},
)
reply = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
)
print("chat:", reply.choices[0].message.content)

# Streams are counted too; the caller sees exactly the chunks it asked for.
stream = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream it"}], stream=True
)
print("stream:", "".join(chunk.choices[0].delta.content or "" for chunk in stream))


async def main() -> None:
    aclient = track_openai(
        AsyncOpenAI(api_key="sk-test", base_url="http://fake/v1",
                    http_client=httpx2.AsyncClient(transport=fake.transport())),
        workspace_id="acme",
        manager=manager,
    )
    embedding = await aclient.embeddings.create(model="text-embedding-3-small", input="hi")
    print("embedding dims:", len(embedding.data[0].embedding))


asyncio.run(main())

report = manager.status("acme")
assert report.enhanced_tracking is not None
print(f"\nworkspace acme: {report.status.value}, "
      f"{report.requests_per_minute.current} requests, {report.tokens_per_day.current} tokens, "
      f"${report.monthly_budget_usd.current:.6f} this month")
for model, usage in report.enhanced_tracking.models_breakdown.items():
    print(f"  {model:<26} {usage.request_count} calls {usage.tokens_used:>5} tokens")
