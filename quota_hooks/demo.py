"""``quota-hooks demo``: real framework clients, offline, through the adapters.

Drives the real OpenAI SDK (sync, async, streaming, retries after a 429) through
``track_openai``, real LiteLLM calls through ``QuotaLogger`` and a LangChain chain through
``QuotaCallbackHandler``, against
:class:`~quota_hooks.testing.FakeOpenAI` (an in-process transport, or a loopback server for
LiteLLM), then prints the status report and the seed's enhanced JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from decimal import Decimal

from .manager import QuotaManager
from .policy import QuotaPolicy
from .storage import Store
from .testing import CaptureSink, FakeOpenAI, FakeUsage

__all__ = ["run_demo"]

WORKSPACE = "demo"
SMALL = "demo-small-budget"


def _openai_traffic(manager: QuotaManager, fake: FakeOpenAI, say: Callable[[str], None]) -> None:
    import httpx2
    from openai import AsyncOpenAI, OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    from .adapters.openai import track_openai

    client = track_openai(
        OpenAI(api_key="sk-demo", base_url="http://fake.openai/v1",
               http_client=httpx2.Client(transport=fake.transport())),
        workspace_id=WORKSPACE, manager=manager, scopes={"team": "search"},
    )
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Summarize the quarterly report."}
    ]
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    say("openai  sync   chat.completions  gpt-4o-mini")
    stream = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    say(f"openai  sync   chat stream       gpt-4o        {len(text)} chars")
    client.responses.create(model="o4-mini", input="Plan a trip.")
    say("openai  sync   responses         o4-mini")
    fake.fail_next(429, times=1)
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    say("openai  sync   429 then retry    gpt-4o-mini   (the SDK retried; both attempts count)")
    client.models.list()
    say("openai  sync   models.list       (counted, exempt from request limits)")

    async def run_async() -> None:
        aclient = track_openai(
            AsyncOpenAI(api_key="sk-demo", base_url="http://fake.openai/v1",
                        http_client=httpx2.AsyncClient(transport=fake.transport())),
            workspace_id=WORKSPACE, manager=manager,
        )
        await asyncio.gather(
            aclient.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c"]),
            aclient.chat.completions.create(model="gpt-4.1-mini", messages=messages),
        )
        say("openai  async  embeddings + chat (concurrent)")

    asyncio.run(run_async())


def _refusal(manager: QuotaManager, fake: FakeOpenAI, say: Callable[[str], None]) -> None:
    import httpx2
    from openai import OpenAI

    from .adapters.openai import track_openai
    from .errors import QuotaExceededError

    client = track_openai(
        OpenAI(api_key="sk-demo", base_url="http://fake.openai/v1",
               http_client=httpx2.Client(transport=fake.transport())),
        workspace_id=SMALL, manager=manager,
    )
    sent = 0
    for _ in range(10):
        try:
            client.chat.completions.create(
                model="gpt-4o", max_tokens=200,
                messages=[{"role": "user", "content": "Draft the launch email."}],
            )
        except QuotaExceededError as exc:
            say(f"openai  sync   refused after {sent} calls, before sending: {exc}")
            return
        sent += 1
    say(f"openai  sync   {sent} calls, none refused")


def _litellm_traffic(
    manager: QuotaManager, fake: FakeOpenAI, say: Callable[[str], None]
) -> None:
    # Keep `import litellm` off the network: use its bundled price map.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    import litellm
    from litellm.exceptions import RateLimitError

    from .adapters.litellm import QuotaLogger

    quota_logger = QuotaLogger(manager=manager, default_workspace=WORKSPACE)
    saved = list(litellm.callbacks)
    litellm.callbacks = [*saved, quota_logger]
    messages = [{"role": "user", "content": "Classify this ticket."}]
    try:
        with fake.serve() as base_url:
            litellm.completion(model="openai/gpt-4o-mini", messages=messages,
                               api_base=base_url, api_key="sk-demo",
                               metadata={"tags": ["team:support"]})
            say("litellm sync   completion        gpt-4o-mini   (via a 127.0.0.1 server)")

            async def run_async() -> None:
                await litellm.acompletion(model="openai/gpt-4o-mini", messages=messages,
                                          api_base=base_url, api_key="sk-demo")
                await manager.adrain()

            asyncio.run(run_async())
            say("litellm async  acompletion       gpt-4o-mini")
        # Another provider: priced by genai-prices at Anthropic's own rates.
        litellm.completion(model="anthropic/claude-sonnet-4-5", messages=messages,
                           mock_response="Billing question.", api_key="sk-ant-demo")
        manager.drain()
        claude = manager.prices.explain("claude-sonnet-4-5", "anthropic")[2].strip()
        say(f"litellm sync   completion        claude-sonnet-4-5 (anthropic: {claude})")
        try:
            litellm.completion(model="gpt-4o-mini", messages=messages,
                               mock_response=RateLimitError(
                                   message="slow down", llm_provider="openai",
                                   model="gpt-4o-mini"))
        except RateLimitError:
            say("litellm sync   429 (mock)        gpt-4o-mini   (recorded as rate_limited)")
        manager.drain()
    finally:
        litellm.callbacks = saved


def _langchain_traffic(
    manager: QuotaManager, fake: FakeOpenAI, say: Callable[[str], None]
) -> None:
    import httpx2
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    from .adapters.langchain import QuotaCallbackHandler

    handler = QuotaCallbackHandler(manager=manager, workspace_id=WORKSPACE)
    llm = ChatOpenAI(model="gpt-4o-mini", api_key=SecretStr("sk-demo"), base_url="http://fake.openai/v1",
                     http_client=httpx2.Client(transport=fake.transport()), stream_usage=True)
    chain = ChatPromptTemplate.from_template("Outline {topic}") | llm | StrOutputParser()
    drafts = chain.batch([{"topic": "quotas"}, {"topic": "budgets"}],
                         config={"callbacks": [handler], "tags": ["team:docs"]})
    say(f"langchain batch  chain x2        gpt-4o-mini   {sum(map(len, drafts))} chars")
    for _ in llm.stream("Stream a haiku.", config={"callbacks": [handler]}):
        pass
    say("langchain stream chat            gpt-4o-mini   (recorded once, at its end)")


def run_demo(
    say: Callable[[str], None] = print,
    store: Store | None = None,
    *,
    pace: float = 0.0,
    on_manager: Callable[[QuotaManager], object] | None = None,
    keep_open: bool = False,
) -> QuotaManager:
    """Run the demo traffic and print the report and the alerts it raised; returns the manager
    for inspection (closed, unless ``keep_open``). ``store`` defaults to memory;
    ``quota-hooks demo`` uses SQLite. ``pace``: seconds to pause after each call, to watch
    them arrive on the dashboard; ``on_manager`` is called with the manager before any call."""
    alerts = CaptureSink()
    manager = QuotaManager(
        QuotaPolicy(rpm=60, tpm=20_000, monthly_budget_usd=Decimal("0.05")),
        policies={SMALL: QuotaPolicy(monthly_budget_usd=Decimal("0.01"))},
        store=store, sinks=[alerts],
    )
    if on_manager is not None:
        on_manager(manager)
    say(f"store: {manager.store!r}")

    def step(line: str) -> None:
        say("  " + line)
        if pace:
            time.sleep(pace)

    fake = FakeOpenAI(FakeUsage(input_tokens=640, output_tokens=180, cached_tokens=512,
                                reasoning_tokens=64))
    say("traffic:")
    _openai_traffic(manager, fake, step)
    _litellm_traffic(manager, fake, step)
    _langchain_traffic(manager, fake, step)
    say(f"enforcement (workspace {SMALL!r}, a $0.01 monthly budget):")
    _refusal(manager, fake, step)

    manager.drain()
    say("\nalerts:")
    for alert in alerts.alerts:
        say(f"  [{alert.kind.value}] {alert.message}")
    report = manager.status(WORKSPACE)
    say(f"\nworkspace {WORKSPACE!r}: status {report.status.value}, "
        f"alert level {report.alert_level.value}")
    for metric, usage in report.limits.items():
        limit = "unlimited" if usage.limit is None else usage.limit
        say(f"  {metric:<20} {usage.current:>10} / {limit:<8} ({usage.percentage:.2f}%)")
    say("\nenhanced status JSON (manager.get_tracker('demo').get_enhanced_status_data()):")
    say(json.dumps(manager.get_tracker(WORKSPACE).get_enhanced_status_data(recent=5), indent=2))
    if not keep_open:
        manager.close()
    return manager
