"""``quota-hooks demo``: real framework clients, offline, through the adapters.

Drives the real OpenAI SDK (sync, async, streaming, retries after a 429) through
``track_openai``, real LiteLLM calls through ``QuotaLogger`` and a LangChain chain through
``QuotaCallbackHandler``, against
:class:`~quota_hooks.testing.FakeOpenAI` (an in-process transport, or a loopback server for
LiteLLM), then prints a summary: per model and method, the refusal, the alerts, and the status
with its reason (``--json``: the seed's enhanced status JSON instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from .alerts import Alert
from .errors import ConfigurationError
from .manager import QuotaManager
from .policy import QuotaPolicy
from .status import QuotaStatus, StatusReport
from .storage import Store
from .testing import CaptureSink, FakeOpenAI, FakeUsage

__all__ = ["DemoRun", "enhanced_json", "explain_status", "fresh_store", "run_demo",
           "summary_lines"]

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


def _refusal(manager: QuotaManager, fake: FakeOpenAI, say: Callable[[str], None]) -> int:
    """Calls into the small budget until one is refused; returns how many were refused."""
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
            return 1
        sent += 1
    say(f"openai  sync   {sent} calls, none refused")
    return 0


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


# ---------------------------------------------------------------------- the demo's store
DEMO_WORKSPACES = frozenset({WORKSPACE, SMALL})


def fresh_store(url: str) -> tuple[Store, str]:
    """The store of one demo run, empty, and a line saying how: each run starts from a fresh
    store, so that every run tells the same story. A SQLite file or Redis prefix that holds
    only the demo's own workspaces is emptied first; one that holds any other workspace's
    usage is refused (ConfigurationError), never touched.

    Raises:
        ConfigurationError: ``url`` is not a store URL, or its store holds other usage.
    """
    from .storage import store_from_url

    store = store_from_url(url)
    if url.startswith("memory://"):
        return store, f"store: {url} (fresh for this run, gone when it ends)"
    try:
        others = sorted(set(store.workspaces()) - DEMO_WORKSPACES)
        existing = bool(store.workspaces())
    except BaseException:
        store.close()
        raise
    if others:
        store.close()
        shown = ", ".join(repr(w) for w in others[:3]) + (" ..." if len(others) > 3 else "")
        raise ConfigurationError(
            f"{url} holds usage of other workspaces ({shown}); the demo starts each run "
            "from an empty store and never deletes anyone's usage: give it its own store "
            "(--store sqlite:///quota-demo.db, or memory://)")
    if not existing:
        return store, f"store: {url} (fresh for this run; kept afterwards for quota-hooks report)"
    path = getattr(store, "path", None)
    clear = getattr(store, "clear", None)
    if path is not None:
        store.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{path}{suffix}")
        store = store_from_url(url)
    elif callable(clear):
        clear()
    else:
        store.close()
        raise ConfigurationError(
            f"{url} already holds the demo's usage and {type(store).__name__} cannot be "
            "emptied: give the demo a fresh store (memory://)")
    return store, (f"store: {url} (fresh for this run: the previous demo run's usage there "
                   "was removed; this one's is kept for quota-hooks report)")


# ---------------------------------------------------------------------- the run
@dataclass
class DemoRun:
    """What one demo run did: its manager (closed unless ``keep_open``), the alerts sent and
    the calls refused."""

    manager: QuotaManager
    alerts: list[Alert] = field(default_factory=list)
    refusals: int = 0


def run_demo(
    say: Callable[[str], None] = print,
    store: Store | None = None,
    *,
    pace: float = 0.0,
    on_manager: Callable[[QuotaManager], object] | None = None,
    keep_open: bool = False,
    summary: bool = True,
) -> DemoRun:
    """Run the demo traffic, then print the summary (unless not ``summary``); returns what it
    did (its manager closed, unless ``keep_open``). ``store`` defaults to memory;
    ``quota-hooks demo`` gives it a fresh SQLite store (:func:`fresh_store`). ``pace``: seconds
    to pause after each call, to watch them arrive on the dashboard; ``on_manager`` is called
    with the manager before any call."""
    sink = CaptureSink()
    manager = QuotaManager(
        QuotaPolicy(rpm=60, tpm=20_000, monthly_budget_usd=Decimal("0.05")),
        policies={SMALL: QuotaPolicy(monthly_budget_usd=Decimal("0.01"))},
        store=store, sinks=[sink],
    )
    if on_manager is not None:
        on_manager(manager)

    def step(line: str) -> None:
        say("  " + line)
        if pace:
            time.sleep(pace)

    fake = FakeOpenAI(FakeUsage(input_tokens=640, output_tokens=180, cached_tokens=512,
                                reasoning_tokens=64))
    say("traffic (offline: a fake OpenAI server in this process, no keys, no network):")
    _openai_traffic(manager, fake, step)
    _litellm_traffic(manager, fake, step)
    _langchain_traffic(manager, fake, step)
    say(f"enforcement (workspace {SMALL!r}, a $0.01 monthly budget):")
    refusals = _refusal(manager, fake, step)
    manager.drain()
    run = DemoRun(manager, list(sink.alerts), refusals)
    if summary:
        for line in summary_lines(run):
            say(line)
    if not keep_open:
        manager.close()
    return run


def enhanced_json(manager: QuotaManager) -> str:
    """The seed's enhanced status JSON of the demo workspace (``demo --json``)."""
    return json.dumps(manager.get_tracker(WORKSPACE).get_enhanced_status_data(recent=5),
                      indent=2)


# ---------------------------------------------------------------------- the summary
def _usd(value: float | None) -> str:
    return "unpriced" if value is None else f"${value:.6f}"


def summary_lines(run: DemoRun) -> list[str]:
    """The demo's summary: per model and per method, the refusals, the alerts, and the
    status of the demo workspace with the reason for it."""
    manager = run.manager
    report = manager.status(WORKSPACE)
    tracking = report.enhanced_tracking
    assert tracking is not None
    lines = ["", f"summary of workspace {WORKSPACE!r}:",
             f"  {'model':<22}{'calls':>7}{'errors':>8}{'tokens':>9}{'cost':>13}"]
    calls = tokens = 0
    cost = 0.0
    for name, m in tracking.models_breakdown.items():
        lines.append(f"  {name:<22}{m.request_count:>7}{m.error_count:>8}{m.tokens_used:>9}"
                     f"{_usd(m.cost_usd):>13}")
        calls, tokens, cost = (calls + m.request_count, tokens + m.tokens_used,
                               cost + (m.cost_usd or 0.0))
    lines.append(f"  {'total':<22}{calls:>7}{'':>8}{tokens:>9}{_usd(cost):>13}")
    lines.append(f"  {'method':<22}{'calls':>7}{'errors':>8}{'tokens':>9}{'cost':>13}")
    for name, u in tracking.api_methods_breakdown.items():
        lines.append(f"  {name:<22}{u.request_count:>7}{u.error_count:>8}{u.tokens_used:>9}"
                     f"{_usd(u.cost_usd):>13}")
    small = manager.status(SMALL, enhanced=False).monthly_budget_usd
    lines.append(f"refusals: {run.refusals} (workspace {SMALL!r}: ${small.current} of its "
                 f"${small.limit} budget spent, then a call that would not fit was refused "
                 "before it was sent)")
    lines.append(f"alerts: {len(run.alerts)}")
    for alert in run.alerts:
        lines.append(f"  [{alert.kind.value}] {alert.message}")
    lines.append(f"status of {WORKSPACE!r}: {report.status.value}, alert level "
                 f"{report.alert_level.value}")
    lines.extend("  " + why for why in explain_status(manager, WORKSPACE, report))
    for metric, usage in report.limits.items():
        limit = "unlimited" if usage.limit is None else usage.limit
        lines.append(f"  {metric:<20} {usage.current:>10} / {limit:<8} "
                     f"({usage.percentage:.2f}%)")
    return lines


def explain_status(manager: QuotaManager, workspace_id: str,
                   report: StatusReport | None = None) -> list[str]:
    """Why a workspace has its status and alert level, in a line each."""
    from ._reads import read_counters
    from .storage.base import workspace_scope

    report = report or manager.status(workspace_id, enhanced=False)
    now = manager.now()
    policy = manager.policies.for_workspace(workspace_id)
    counters = read_counters(manager.store, workspace_scope(workspace_id), policy, now)
    limited = {m: u for m, u in report.limits.items() if u.limit is not None}
    top = max(limited.items(), key=lambda item: item[1].percentage, default=None)
    warning, critical = report.thresholds["warning"], report.thresholds["critical"]
    status = report.status
    if status is QuotaStatus.QUOTA_EXCEEDED:
        spent = [m for m, u in limited.items() if m.endswith("_budget_usd")
                 and u.percentage >= 100]
        periods = {"monthly_budget_usd": "month", "weekly_budget_usd": "week",
                   "daily_budget_usd": "day"}
        turns = " and ".join(periods[m] for m in spent) or "period"
        why = (f"the {', '.join(m.replace('_budget_usd', '') for m in spent) or 'money'} "
               f"budget is spent: calls are refused until the {turns} turns")
    elif status is QuotaStatus.RATE_LIMITED and counters.rate_limited_minute:
        why = (f"a provider answered 429 (rate limited) to {counters.rate_limited_minute} "
               "call(s) in the last minute; this clears once a minute passes without one")
    elif status is QuotaStatus.RATE_LIMITED:
        full = [m for m, u in limited.items() if not m.endswith("_budget_usd")
                and u.percentage >= 100]
        why = f"the {', '.join(full) or 'rate'} limit is reached: calls wait or are refused"
    elif status is QuotaStatus.DEGRADED:
        why = ("tracking failed recently, or most calls of the last minute failed: the "
               "numbers may be behind")
    elif status is QuotaStatus.WARNING and top is not None:
        why = f"{top[0]} is at {top[1].percentage:.1f}% of its limit (warning at {warning:g}%)"
    else:
        why = f"every limit is under the {warning:g}% warning threshold"
    if top is None:
        level = "alert level: no limit is set"
    else:
        level = (f"alert level {report.alert_level.value}: the most used limit is {top[0]} at "
                 f"{top[1].percentage:.1f}% (warning at {warning:g}%, critical at "
                 f"{critical:g}%)")
    return [f"why: {why}", level]
