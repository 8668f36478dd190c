"""quota-hooks against its peers, in the same run: OpenAI (bare SDK, a usage-only floor
transport, OpenTelemetry's openai-v2 instrumentation), LangChain (UsageMetadataCallbackHandler,
a trivial handler) and LiteLLM (a trivial CustomLogger).

Every variant of a case gets its own client and its own quota manager, and the variants of a
case alternate round by round (see ``_harness.compare``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from quota_hooks import QuotaManager, QuotaPolicy

from ._harness import (
    Goal,
    Spread,
    compare,
    note,
    overhead_ratio,
    overhead_us,
    per_call_us,
    ratio,
    report,
)
from ._profile import cause


def observing() -> QuotaManager:
    """A manager that counts and enforces nothing."""
    return QuotaManager(QuotaPolicy(mode="observe"))


def enforcing() -> QuotaManager:
    """A manager whose rpm, tpm and monthly budget are checked before every call (and never
    reached)."""
    return QuotaManager(QuotaPolicy(rpm=10**9, rpd=None, tpm=10**12, tpd=None,
                                    monthly_budget_usd=Decimal(10**9), mode="raise"))


def counted(manager: QuotaManager, workspace: str = "ws") -> tuple[int, int]:
    """Calls and tokens ``manager`` has counted today for ``workspace``."""
    status = manager.status(workspace)
    return int(status.requests_per_day.current), int(status.tokens_per_day.current)


class Check:
    """That a variant did its job while it was timed: a tracked client that counted nothing
    (or the wrong tokens) would look cheap. Each check compares what a counter gained with
    the calls made."""

    def __init__(self, case: str, counters: dict[str, Callable[[], tuple[int, int]]]) -> None:
        self.case, self.counters = case, counters
        self.before = {name: counter() for name, counter in counters.items()}

    def done(self, calls: int, tokens_per_call: int) -> None:
        wrong = []
        for name, counter in self.counters.items():
            (c0, t0), (c1, t1) = self.before[name], counter()
            if (c1 - c0, t1 - t0) != (calls, calls * tokens_per_call):
                wrong.append(f"{name} counted {c1 - c0} calls, {t1 - t0} tokens")
        if wrong:
            note(f"{self.case}: CHECK FAILED, {calls} calls of {tokens_per_call} tokens made:"
                 f" {'; '.join(wrong)}")
        else:
            note(f"{self.case}: every tracking variant counted all {calls:,} calls and their"
                 f" tokens ({', '.join(self.counters)})")


def made(n: int, rounds: int) -> int:
    """Calls of each variant in ``compare(variants, n, rounds)``, its warm-up included."""
    return max(1, n // 10) + n * rounds


# ---------------------------------------------------------------------- OpenAI
_CREATED = 1_727_000_000
_COMPLETION = {
    "id": "chatcmpl-AJ3kq1l7bPz8rV2xYw9cTn4mQe5sD",
    "object": "chat.completion",
    "created": _CREATED,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "Sure. Here is a short answer that stands in for a real one, long enough"
                       " to look like a reply a model would give to a short question.",
            "refusal": None,
            "annotations": [],
        },
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_0ba0d124f1",
}
_HEADERS = [
    ("date", "Tue, 01 Oct 2024 12:00:00 GMT"),
    ("connection", "keep-alive"),
    ("access-control-expose-headers", "X-Request-ID"),
    ("openai-organization", "user-bench"),
    ("openai-processing-ms", "412"),
    ("openai-version", "2020-10-01"),
    ("x-ratelimit-limit-requests", "30000"),
    ("x-ratelimit-limit-tokens", "150000000"),
    ("x-ratelimit-remaining-requests", "29999"),
    ("x-ratelimit-remaining-tokens", "149999980"),
    ("x-ratelimit-reset-requests", "2ms"),
    ("x-ratelimit-reset-tokens", "0s"),
    ("x-request-id", "req_6c1b0d8a3f2e4b7a9c5d1e0f2a3b4c5d"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
    ("cf-cache-status", "DYNAMIC"),
    ("server", "cloudflare"),
]


def _chunk(delta: dict[str, Any], finish: str | None = None,
           usage: dict[str, Any] | None = None) -> bytes:
    choices = [] if usage is not None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    event = {"id": _COMPLETION["id"], "object": "chat.completion.chunk", "created": _CREATED,
             "model": _COMPLETION["model"], "service_tier": "default",
             "system_fingerprint": _COMPLETION["system_fingerprint"], "choices": choices,
             "usage": usage}
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def sse_events(chunks: int) -> list[bytes]:
    """A streamed chat completion as OpenAI sends it with include_usage: a role chunk,
    ``chunks`` content chunks, a finish chunk, the usage chunk and [DONE], one event a write."""
    events = [_chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [_chunk({"content": f" word{i}"}) for i in range(chunks)]
    events.append(_chunk({}, "stop"))
    events.append(_chunk({}, usage=_COMPLETION["usage"]))
    events.append(b"data: [DONE]\n\n")
    return events


def provider(stream_chunks: int = 50) -> Any:
    """An in-process OpenAI (an httpx2 transport): every request gets the same answer, whose
    body is a stream (read through the SDK and the HTTP library as a network body would be)."""
    import httpx2

    body = [json.dumps(_COMPLETION, indent=2).encode()]
    events = sse_events(stream_chunks)
    json_headers = [*_HEADERS, ("content-type", "application/json"),
                    ("content-length", str(len(body[0])))]
    sse_headers = [*_HEADERS, ("content-type", "text/event-stream; charset=utf-8"),
                   ("transfer-encoding", "chunked")]

    class Body(httpx2.SyncByteStream):
        def __init__(self, chunks: list[bytes]) -> None:
            self.chunks = chunks

        def __iter__(self) -> Iterator[bytes]:
            yield from self.chunks

    class Provider(httpx2.BaseTransport):
        def handle_request(self, request: Any) -> Any:
            content = request.content
            if b'"stream":true' in content or b'"stream": true' in content:
                return httpx2.Response(200, headers=sse_headers, stream=Body(events),
                                       request=request)
            return httpx2.Response(200, headers=json_headers, stream=Body(body),
                                   request=request)

    return Provider()


def usage_only(inner: Any) -> Any:
    """The floor: a transport that reads a response's usage and nothing else. It scans each
    chunk of the body for a usage object and parses that object alone (no parse of the whole
    body, nor of any stream event without usage)."""
    import httpx2

    decoder = json.JSONDecoder()

    class Tap(httpx2.SyncByteStream):
        def __init__(self, stream: Any, owner: Any) -> None:
            self.stream, self.owner = stream, owner

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.stream:
                at = chunk.find(b'"usage":')
                if at >= 0 and b'"usage":null' not in chunk:
                    text = chunk[at + 8:].decode()
                    usage, _ = decoder.raw_decode(text, len(text) - len(text.lstrip()))
                    self.owner.tokens += usage["total_tokens"]
                yield chunk

        def close(self) -> None:
            self.stream.close()

    class UsageOnly(httpx2.BaseTransport):
        tokens = 0

        def handle_request(self, request: Any) -> Any:
            response = inner.handle_request(request)
            response.stream = Tap(response.stream, self)
            return response

    return UsageOnly()


def otel_create_wrappers() -> tuple[Any, Any, Callable[[], dict[str, Any]]]:
    """OpenTelemetry's openai-v2 wrappers of ``Completions.create``: one with spans only
    (simple span processor, an exporter that keeps only the last span), one with spans and
    metrics (an in-memory metric reader). The instrumentor patches the class; the wrappers
    are taken from it and the class restored, so that each is bound to one client only."""
    import openai.resources.chat.completions as chat
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult as Result

    class LastSpan(SpanExporter):
        def __init__(self) -> None:
            self.count, self.last = 0, None

        def export(self, spans: Any) -> Result:
            self.count += len(spans)
            self.last = spans[-1]
            return Result.SUCCESS

    def wrapper(exporter: SpanExporter, meters: Any) -> Any:
        tracing = TracerProvider()
        tracing.add_span_processor(SimpleSpanProcessor(exporter))
        instrumentor = OpenAIInstrumentor()
        instrumentor.instrument(tracer_provider=tracing, meter_provider=meters)
        try:
            wrapped = chat.Completions.__dict__["create"]
        finally:
            instrumentor.uninstrument()
        if not hasattr(wrapped, "__wrapped__"):
            raise RuntimeError("openai-v2 did not wrap Completions.create")
        return wrapped

    spans, spans_m = LastSpan(), LastSpan()
    reader = InMemoryMetricReader()
    plain = wrapper(spans, NoOpMeterProvider())
    metered = wrapper(spans_m, MeterProvider(metric_readers=[reader]))

    def seen() -> dict[str, Any]:
        last = spans.last
        attributes = dict(last.attributes or {}) if last is not None else {}
        data = reader.get_metrics_data()
        metrics = sorted({m.name for rm in (data.resource_metrics if data else [])
                          for sm in rm.scope_metrics for m in sm.metrics})
        return {"spans": spans.count + spans_m.count, "last": attributes, "metrics": metrics}

    return plain, metered, seen


def openai_clients() -> tuple[dict[str, Any], dict[str, QuotaManager],
                              Callable[[], dict[str, Any]]]:
    import httpx2
    import openai.resources.chat.completions as chat
    from openai import OpenAI

    from quota_hooks.adapters.openai import track_openai

    def client(transport: Any = None) -> Any:
        return OpenAI(api_key="sk-bench", base_url="https://api.openai.invalid/v1",
                      max_retries=0,
                      http_client=httpx2.Client(transport=transport or provider()))

    def instrumented(wrapped: Any) -> Any:
        c = client()
        c.chat.completions.create = wrapped.__get__(c.chat.completions, chat.Completions)
        return c

    managers = {"observe": observing(), "enforcing": enforcing()}
    clients = {
        "bare": client(),
        "control": client(),
        "floor": client(usage_only(provider())),
        "observe": track_openai(client(), workspace_id="ws", manager=managers["observe"]),
        "enforcing": track_openai(client(), workspace_id="ws", manager=managers["enforcing"]),
    }
    seen: Callable[[], dict[str, Any]] = dict
    try:
        plain, metered, seen = otel_create_wrappers()
    except ImportError as exc:
        print(f"  (OpenTelemetry openai-v2 not installed: {exc})")
    else:
        clients["otel"] = instrumented(plain)
        clients["otel+metrics"] = instrumented(metered)
    return clients, managers, seen


CONTROL = "bare again (A/A: the noise floor)"
_LABELS = {"control": CONTROL, "floor": "floor (usage-only transport)",
           "observe": "quota-hooks observe", "enforcing": "quota-hooks enforcing",
           "otel": "OTel openai-v2 spans", "otel+metrics": "OTel openai-v2 spans+metrics"}


def openai_overhead(quick: bool) -> None:
    clients, managers, seen = openai_clients()
    msgs: Any = [{"role": "user", "content": "Say something short."}]

    def call(c: Any) -> Callable[[], None]:
        return lambda: c.chat.completions.create(model="gpt-4o-mini", messages=msgs,
                                                 max_tokens=200) and None

    def stream(c: Any) -> Callable[[], None]:
        def run() -> None:
            for _ in c.chat.completions.create(model="gpt-4o-mini", messages=msgs,
                                               max_tokens=200, stream=True,
                                               stream_options={"include_usage": True}):
                pass
        return run

    goals = {
        "non-stream": {"observe": Goal.of("<=", 1.06), "enforcing": Goal.of("<=", 1.10)},
        "stream (50 chunks)": {"observe": Goal.of("<=", 1.01),
                               "enforcing": Goal.of("<=", 1.01)},
    }
    plans = (("non-stream", call, (100, 5) if quick else (200, 30), 300),
             ("stream (50 chunks)", stream, (20, 5) if quick else (40, 30), 60))
    for kind, make, (n, rounds), profiled in plans:
        variants = {name: make(c) for name, c in clients.items()}
        check = Check(f"openai {kind}", {name: (lambda m=m: counted(m))
                                         for name, m in managers.items()})
        times = compare(variants, n, rounds)
        check.done(made(n, rounds), 150)
        report(f"openai {kind}: bare SDK, per call", *_per_call(times))
        otel = ratio(times, "otel")[0] if "otel" in times else None
        for name in clients:
            if name == "bare":
                continue
            value, spread = ratio(times, name)
            goal = goals[kind].get(name)
            if goal is not None and name == "observe" and kind == "non-stream":
                if otel is None:
                    note("OTel openai-v2 not installed: the observe goal is checked against"
                         " bare only")
                else:
                    goal = goal.also("<", otel, "OTel openai-v2 spans")
            variant = variants[name]
            report(f"openai {kind}: {_LABELS[name]} / bare", value, "x", goal, spread,
                   cause=lambda v=variant, b=variants["bare"], k=profiled: cause(
                       v, base=b, calls=k))
            report(f"openai {kind}: {_LABELS[name]}, overhead", *_us(times, name))
        if "otel" in clients:  # did the instrumentation see this kind of call whole?
            checked = seen()
            last = checked["last"]
            usage = (last.get("gen_ai.usage.input_tokens"),
                     last.get("gen_ai.usage.output_tokens"))
            note(f"OTel openai-v2 ({kind}): {checked['spans']:,} spans so far, the last one's"
                 f" usage {usage[0]}/{usage[1]}"
                 + ("" if usage == (100, 50) else " (CHECK FAILED: expected 100/50)")
                 + f"; metrics {', '.join(checked['metrics']) or 'none'}")


def _per_call(times: dict[str, list[float]]) -> tuple[float, str, None, Spread]:
    value, spread = per_call_us(times, "bare")
    return value, "us", None, spread


def _us(times: dict[str, list[float]], name: str, base: str = "bare"
        ) -> tuple[float, str, None, Spread]:
    value, spread = overhead_us(times, name, base)
    return value, "us", None, spread


# ---------------------------------------------------------------------- LangChain
def langchain_overhead(quick: bool) -> None:
    from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from quota_hooks.adapters.langchain import QuotaCallbackHandler

    usage: Any = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}

    class Endless:
        def __iter__(self) -> Endless:
            return self

        def __next__(self) -> AIMessage:
            return AIMessage(content="ok", usage_metadata=usage,
                             response_metadata={"model_name": "gpt-4o-mini"})

    class Trivial(BaseCallbackHandler):
        """The floor: adds each run's usage_metadata to a dict."""

        def __init__(self) -> None:
            self.totals: dict[str, int] = {}

        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            for generations in response.generations:
                for generation in generations:
                    found = getattr(generation.message, "usage_metadata", None) or {}
                    for key in ("input_tokens", "output_tokens"):
                        self.totals[key] = self.totals.get(key, 0) + found.get(key, 0)

    class FakeChat(GenericFakeChatModel):
        """Names its model and provider in the run's metadata, as real chat models do."""

        def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
            params = super()._get_ls_params(stop=stop, **kwargs)
            params.update(ls_provider="openai", ls_model_name="gpt-4o-mini")
            return params

    model = FakeChat(messages=Endless())
    managers = {"observe": observing(), "enforcing": enforcing()}
    peer, floor = UsageMetadataCallbackHandler(), Trivial()
    handlers: dict[str, Any] = {
        "peer": peer,
        "floor": floor,
        "observe": QuotaCallbackHandler(manager=managers["observe"], workspace_id="ws"),
        "enforcing": QuotaCallbackHandler(manager=managers["enforcing"], workspace_id="ws"),
    }

    def peer_count() -> tuple[int, int]:
        found = peer.usage_metadata.get("gpt-4o-mini") or {}
        return found.get("input_tokens", 0) // 10, found.get("total_tokens", 0)

    def floor_count() -> tuple[int, int]:
        return floor.totals.get("input_tokens", 0) // 10, sum(floor.totals.values())

    counters: dict[str, Callable[[], tuple[int, int]]] = {
        "UsageMetadataCallbackHandler": peer_count, "trivial dict handler": floor_count}
    counters |= {f"quota-hooks {name}": (lambda m=m: counted(m))
                 for name, m in managers.items()}
    variants: dict[str, Callable[[], None]] = {"bare": lambda: model.invoke("hi") and None,
                                               "control": lambda: model.invoke("hi") and None}
    for name, handler in handlers.items():
        config: Any = {"callbacks": [handler]}
        variants[name] = lambda config=config: model.invoke("hi", config=config) and None
    n, rounds = (300, 5) if quick else (500, 40)
    check = Check("langchain", counters)
    times = compare(variants, n, rounds)
    check.done(made(n, rounds), 15)
    report("langchain: bare invoke (GenericFakeChatModel), per call", *_per_call(times))
    labels = {"control": CONTROL, "peer": "UsageMetadataCallbackHandler",
              "floor": "trivial dict handler", "observe": "quota-hooks observe",
              "enforcing": "quota-hooks enforcing"}
    for name, label in labels.items():
        value, spread = ratio(times, name)
        report(f"langchain: {label} / bare", value, "x", spread=spread)
        report(f"langchain: {label}, overhead", *_us(times, name))
    for name, limit in (("observe", 1.0), ("enforcing", 1.3)):
        value, spread = overhead_ratio(times, name, "peer")
        report(f"langchain: {labels[name]} overhead / UsageMetadataCallbackHandler overhead",
               value, "x", Goal.of("<=", limit), spread,
               cause=lambda v=variants[name]: cause(v, base=variants["bare"], calls=1_000))


# ---------------------------------------------------------------------- LiteLLM
_LITELLM_LISTS = ("callbacks", "success_callback", "_async_success_callback",
                  "failure_callback", "_async_failure_callback", "input_callback",
                  "_async_input_callback")


def litellm_overhead(quick: bool) -> None:
    """litellm.completion(mock_response=...) with no callback, a trivial CustomLogger and
    QuotaLogger. litellm runs sync success callbacks on a thread pool, so every variant waits
    until that pool is idle after each call: a callback's cost is counted wherever it runs.
    Each variant sets litellm's callback lists to its own before each call (litellm copies
    ``litellm.callbacks`` into its other lists, and never takes them out again)."""
    import litellm
    from litellm.integrations.custom_logger import CustomLogger

    from quota_hooks.adapters.litellm import QuotaLogger

    class Trivial(CustomLogger):
        """The peer: reads the standard logging object litellm builds for every call."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = self.tokens = 0

        def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                              end_time: Any) -> None:
            self.calls += 1
            self.tokens += kwargs["standard_logging_object"]["total_tokens"]

    saved = {name: list(getattr(litellm, name, None) or []) for name in _LITELLM_LISTS}
    executor = litellm.utils.executor
    msgs = [{"role": "user", "content": "hi"}]

    def idle() -> None:
        slots, cap = executor._pending_slots, executor._max_pending_tasks
        while cap - slots._value > 0:
            time.sleep(0)

    def lists_for(logger: Any) -> dict[str, list[Any]]:
        for name in _LITELLM_LISTS:
            setattr(litellm, name, [])
        litellm.callbacks = [logger] if logger is not None else []
        litellm.completion(model="gpt-4o-mini", messages=msgs, mock_response="ok")
        idle()
        return {name: list(getattr(litellm, name)) for name in _LITELLM_LISTS}

    def variant(logger: Any) -> Callable[[], None]:
        lists = lists_for(logger)

        def run() -> None:
            for name, value in lists.items():
                setattr(litellm, name, value)
            litellm.completion(model="gpt-4o-mini", messages=msgs, mock_response="ok")
            idle()
        return run

    trivial = Trivial()
    manager = observing()
    ours = QuotaLogger(manager=manager, default_workspace="ws")
    variants = {"bare": variant(None), "control": variant(None), "peer": variant(trivial),
                "observe": variant(ours)}
    n, rounds = (50, 5) if quick else (100, 40)
    check = Check("litellm", {"trivial CustomLogger": lambda: (trivial.calls, trivial.tokens),
                              "QuotaLogger observe": lambda: counted(manager)})
    try:
        times = compare(variants, n, rounds)
        check.done(made(n, rounds), 30)  # mock_response: 10 prompt + 20 completion tokens
        report("litellm: bare completion(mock_response), per call", *_per_call(times))
        for name, label in (("control", CONTROL), ("peer", "trivial CustomLogger"),
                            ("observe", "QuotaLogger observe")):
            value, spread = ratio(times, name)
            report(f"litellm: {label} / bare", value, "x", spread=spread)
            report(f"litellm: {label}, overhead", *_us(times, name))
        value, spread = overhead_us(times, "observe", "peer")
        hooks = [(ours, "log_pre_api_call"), (ours, "log_success_event")]
        report("litellm: QuotaLogger overhead - CustomLogger overhead", value, "us",
               Goal.of("<=", 20), spread,
               cause=lambda: "QuotaLogger's hooks (log_pre_api_call in the caller's thread,"
               " log_success_event on litellm's pool): "
               + cause(variants["observe"], calls=300, hooks=hooks))
    finally:
        for name, kept in saved.items():
            setattr(litellm, name, kept)
