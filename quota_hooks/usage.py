"""`UsageRecord`: one LLM call, normalized.

Every adapter turns what its framework saw into a ``UsageRecord``; the core only ever sees
these. A record holds metadata only: never a prompt, a completion or a key.

Numbers from providers are not trusted blindly. Adapters pass what the provider reported
through :func:`reported_usage`, the one rule for usage: usage that is missing, null, not a whole
number, negative, NaN, absurdly large (over ``2**40``) or inconsistent (reasoning tokens above the
completion tokens, say) is replaced by the call's estimate (what its reservation held), the
record says ``estimated=True`` and why (``estimate_reason``), and one warning is logged. A call
never settles at 0 because its usage could not be read.

A record built by hand is checked too: a bad count is replaced by 0 and named in
``invalid_fields`` (a cost over ``MAX_COST`` is distrusted the same way); the manager then settles
such a record at its reservation's estimate. A bad value never credits a budget and never raises
into the caller.

Names (workspace, model, method, tags, scopes) are kept as given, except that lone surrogates,
which no store can encode, are escaped (``"\\ud800"``; see :func:`storable`), and a name longer
than :data:`MAX_NAME_LENGTH` keeps its start and a hash of the whole (see :func:`bounded`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, make_dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any, TypeVar, cast

from .errors import ConfigurationError

__all__ = [
    "MAX_COST",
    "MAX_COUNT",
    "MAX_NAME_LENGTH",
    "TOKEN_FIELDS",
    "Estimate",
    "UsageRecord",
    "bounded",
    "estimate_tokens",
    "reported_usage",
    "storable",
]

logger = logging.getLogger("quota_hooks")

#: Largest count a record trusts. Anything above is a corrupt value, not usage.
MAX_COUNT = 2**40
#: Largest cost in USD one record trusts (a million dollars for one call is a corrupt value).
MAX_COST = Decimal(1_000_000)

_NAME_FIELDS = ("workspace_id", "model", "api_method", "provider", "source")
_COST_FIELDS = ("cost", "reported_cost")
_INT_FIELDS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "image_input_tokens",
    "image_output_tokens",
    "images",
    "characters",
    "attempt",
)


#: Longest name kept as given (a workspace, model, API method, provider, scope or tag); a
#: longer one keeps its first characters and a hash of the whole (see :func:`bounded`).
MAX_NAME_LENGTH = 200
_HASH_LENGTH = 12


#: Scopes a call is charged to besides its workspace (``user``, ``team``, tags of the form
#: ``kind:value``): the first 16 count; a call naming more (metadata a client sets) must not
#: create thousands of scopes at once.
MAX_SCOPES = 16
_scopes_cut = False


def _first_scopes(scopes: Mapping[Any, Any]) -> dict[Any, Any]:
    """The first :data:`MAX_SCOPES` of ``scopes``, with a warning the first time."""
    global _scopes_cut
    if not _scopes_cut:
        _scopes_cut = True
        logger.warning("quota-hooks: a call named %d scopes; only the first %d are charged "
                       "(MAX_SCOPES)", len(scopes), MAX_SCOPES)
    return dict(itertools.islice(scopes.items(), MAX_SCOPES))


def bounded(text: str) -> str:
    """``text`` as a store keeps it: :func:`storable`, and at most :data:`MAX_NAME_LENGTH`
    characters. A longer name keeps its start, then ``~`` and 12 hex digits of its SHA-256,
    so that distinct names stay distinct while no name can make a status or a key huge."""
    if len(text) <= MAX_NAME_LENGTH:
        return storable(text)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LENGTH]
    return storable(text[: MAX_NAME_LENGTH - _HASH_LENGTH - 1]) + "~" + digest


def storable(text: str) -> str:
    """``text`` as every store can encode it: lone surrogates (from ``surrogateescape``
    decoding, say), which UTF-8 cannot encode, become ``\\udXXX`` escapes. Other text is
    returned unchanged (the same object)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One LLM call (one HTTP attempt, for adapters that see attempts), normalized.

    Token conventions follow OpenAI's: ``input_tokens`` includes the cached, cache-write and
    audio input tokens; ``output_tokens`` includes the reasoning and audio output tokens.
    ``total_tokens`` defaults to ``input_tokens + output_tokens``.

    ``cost`` is in USD as an exact ``Decimal``; leave it ``None`` and the manager prices the
    record from its :class:`~quota_hooks.pricing.PriceBook`.
    """

    # identity
    workspace_id: str = "default"
    model: str = "unknown"
    api_method: str = "chat.completions"
    provider: str = "openai"
    source: str = "manual"
    timestamp: datetime | None = None
    """When the call happened (UTC); ``None``: when it is recorded, by the manager's clock
    (records read back from a store always have it). It decides the minute, day and budget
    month the call counts in."""
    scopes: Mapping[str, str] = field(default_factory=dict, hash=False)
    tags: tuple[str, ...] = ()
    # tokens
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    #: The part of ``cache_write_tokens`` written for an hour (Anthropic prices it higher
    #: than the 5-minute writes).
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    #: The image tokens of the input (an image edit's input images, an image sent to a chat
    #: model): part of ``input_tokens``, priced at the image input price where one exists.
    image_input_tokens: int = 0
    #: The image tokens of the output (gpt-image-1, Gemini's image models): part of
    #: ``output_tokens``, priced at the image output price where one exists.
    image_output_tokens: int = 0
    # units
    images: int = 0
    image_size: str | None = None
    image_quality: str | None = None
    audio_seconds: float = 0.0
    characters: int = 0
    # call facts
    latency_ms: float | None = None
    success: bool = True
    status_code: int | None = None
    error_type: str | None = None
    request_id: str | None = None
    stream: bool = False
    attempt: int = 0
    service_tier: str | None = None
    """The service tier the provider says it served (OpenAI's ``service_tier``: ``default``,
    ``flex``, ``priority``): the one billed."""
    batch: bool = False
    """A Batch API call (billed at the batch price)."""
    estimated: bool = False
    #: Why the tokens are an estimate (``"no usage reported"``, ``"untrusted usage: ..."``).
    estimate_reason: str | None = None
    cost: Decimal | None = None
    price_source: str | None = None
    reported_cost: Decimal | None = None
    """The cost another layer reported (litellm's ``response_cost``), kept as a cross-check of
    ``cost``."""
    #: Names of fields whose reported value was not trusted and was replaced (see module doc).
    invalid_fields: tuple[str, ...] = ()
    server_address: str | None = None
    """The host the call went to (``api.openai.com``, ``10.0.0.5:8000``: a port only when it
    is not the scheme's), for OpenTelemetry's ``server.address``; never a path or a query."""

    @property
    def is_rate_limited(self) -> bool:
        """True when the provider answered 429 (rate limited)."""
        return self.status_code == 429

    def with_cost(
        self, cost: Decimal | None, price_source: str | None, timestamp: datetime | None = None
    ) -> UsageRecord:
        """Return a copy of this record with ``cost`` and ``price_source`` set (and
        ``timestamp``, when given).

        ``cost`` must be a finite, non-negative ``Decimal`` or ``None``; the copy skips the
        validation the original already passed (this runs once per call, on the hot path).
        """
        if cost is not None and not (type(cost) is Decimal and cost.is_finite() and cost >= 0):
            return replace(self, cost=cost, price_source=price_source,
                           timestamp=timestamp or self.timestamp)
        copy = _Draft(*_all_fields(self))
        copy.cost = cost
        copy.price_source = price_source
        if timestamp is not None:
            copy.timestamp = timestamp.astimezone(UTC)
        copy.__class__ = UsageRecord
        return cast(UsageRecord, copy)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (timestamp as ISO 8601, cost as a string)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["timestamp"] = None if self.timestamp is None else self.timestamp.isoformat()
        out["scopes"] = dict(self.scopes)
        out["tags"] = list(self.tags)
        out["invalid_fields"] = list(self.invalid_fields)
        for name in _COST_FIELDS:
            value = getattr(self, name)
            out[name] = None if value is None else str(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageRecord:
        """The record of a :meth:`to_dict` dict, or of one without the fields left at their
        defaults (unknown keys are an error); ``timestamp`` may be ISO 8601 or epoch seconds."""
        fields = dict(data)
        unknown = set(fields) - set(_FIELD_NAMES)
        if unknown:
            raise ValueError(f"unknown UsageRecord fields: {sorted(unknown)}")
        stamp = fields.get("timestamp")
        if isinstance(stamp, str):
            fields["timestamp"] = datetime.fromisoformat(stamp)
        elif isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
            fields["timestamp"] = datetime.fromtimestamp(stamp, UTC)  # epoch seconds
        for name in _COST_FIELDS:
            if isinstance(fields.get(name), str):
                fields[name] = Decimal(fields[name])
        for name in ("tags", "invalid_fields"):
            if name in fields:
                fields[name] = tuple(fields[name])
        return cls(**fields)


_FIELD_NAMES = tuple(UsageRecord.__dataclass_fields__)

# ----------------------------------------------------------------------------- construction
# A frozen dataclass's generated __init__ sets each of its ~40 fields through
# object.__setattr__ (about 0.2 µs a field on CPython 3.11): 9 µs a record, on every call's
# hot path. So a record is built as a _Draft (a plain slotted dataclass with the same fields,
# in the same order: the same memory layout), checked and cleaned while it is still mutable,
# in one pass, and then becomes a UsageRecord (``__class__`` assignment, which CPython allows
# between classes of one layout). From then on it is as frozen as any frozen dataclass.
_T = TypeVar("_T")


def _mutable_twin(cls: type[Any], name: str) -> type[Any]:
    """A plain slotted dataclass with the fields of the frozen, slotted dataclass ``cls``, in
    the same order and with the same defaults: the same slots, so the same memory layout, and
    an instance of it may become a ``cls`` by ``__class__`` assignment."""
    twin = make_dataclass(
        name,
        [(f.name, f.type, field(default=f.default) if f.default is not MISSING
          else field(default_factory=f.default_factory))
         for f in fields(cls)],
        slots=True, eq=False, repr=False,
    )
    plain = not hasattr(cls, "__post_init__") and all(f.init for f in fields(cls))
    if not plain or vars(twin).get("__slots__") != vars(cls).get("__slots__"):
        raise TypeError(f"{cls.__name__} has no mutable twin (not a plain slotted dataclass)")
    return twin


def fast_constructor(cls: type[_T]) -> Callable[..., _T]:
    """A constructor of the frozen, slotted dataclass ``cls`` for the hot path: the same
    arguments and defaults as ``cls(...)``, and the same object, about three times cheaper.

    The generated ``__init__`` of a frozen dataclass sets each field through
    ``object.__setattr__`` (about 0.3 µs a field); this one fills its :func:`_mutable_twin`
    and gives it ``cls`` as its class, as a :class:`UsageRecord` is built (above)."""
    twin = _mutable_twin(cls, f"_{cls.__name__}Draft")

    def build(*args: Any, **kwargs: Any) -> _T:
        made = twin(*args, **kwargs)
        made.__class__ = cls
        return cast(_T, made)

    build.__name__ = build.__qualname__ = f"new_{cls.__name__}"
    return build


_Draft = _mutable_twin(UsageRecord, "_Draft")
_all_fields = attrgetter(*_FIELD_NAMES)


def _new_record(cls: type[UsageRecord], *args: Any, **kwargs: Any) -> UsageRecord:
    if args:  # positional fields: by name, so that only what was given is checked
        if len(args) > len(_FIELD_NAMES):
            raise TypeError(f"UsageRecord takes at most {len(_FIELD_NAMES)} fields, "
                            f"got {len(args)}")
        given = dict(zip(_FIELD_NAMES, args, strict=False))
        twice = given.keys() & kwargs.keys()
        if twice:
            raise TypeError(f"UsageRecord got multiple values for {sorted(twice)}")
        kwargs = given | kwargs
    try:
        draft = _Draft(**kwargs)
    except TypeError as exc:  # an unknown field: named as the caller wrote it
        raise TypeError(str(exc).replace("_Draft.__init__()", "UsageRecord()")) from None
    _clean(draft, kwargs)
    if cls is not UsageRecord:  # a subclass may add slots: build it the frozen way
        return _frozen_init(cls, *_all_fields(draft))
    draft.__class__ = UsageRecord
    return cast(UsageRecord, draft)


def _frozen_init(cls: type[UsageRecord], *values: Any) -> UsageRecord:
    """A record of a subclass, built field by field as a frozen dataclass builds itself."""
    record = object.__new__(cls)
    for name, value in zip(_FIELD_NAMES, values, strict=True):
        object.__setattr__(record, name, value)
    return record


def _built(self: UsageRecord, *args: Any, **kwargs: Any) -> None:
    """``UsageRecord.__init__``: the record was built and checked by ``__new__``."""


UsageRecord.__new__ = staticmethod(_new_record)  # type: ignore[assignment]
UsageRecord.__init__ = _built  # type: ignore[method-assign]


_INT, _NAME, _COST, _OTHER = range(4)
_KINDS = {**dict.fromkeys(_INT_FIELDS, _INT), **dict.fromkeys(_NAME_FIELDS, _NAME),
          **dict.fromkeys(_COST_FIELDS, _COST)}


def _clean(d: Any, given: Mapping[str, Any]) -> None:
    """Check and clean a draft record in place, in one pass over the fields ``given`` (the
    defaults are clean): bad counts become 0 (and are named in ``invalid_fields``),
    sub-counts are cut to their totals, names are bounded."""
    bad: list[str] = []
    for name, value in given.items():
        kind = _KINDS.get(name, _OTHER)
        if kind is _INT:
            if type(value) is not int or not 0 <= value <= MAX_COUNT:
                clean = _clean_int(value)
                if clean is None:
                    bad.append(name)
                    clean = 0
                setattr(d, name, clean)
        elif kind is _NAME:
            if type(value) is not str:
                raise ConfigurationError(
                    f"UsageRecord.{name} must be a string, got {type(value).__name__}")
            if len(value) > MAX_NAME_LENGTH or not value.isascii():
                setattr(d, name, bounded(value))
        elif kind is _COST:
            if value is not None and not (
                    type(value) is Decimal and value.is_finite() and 0 <= value <= MAX_COST):
                clean_cost = _clean_cost(value)
                if clean_cost is None:
                    bad.append(name)
                setattr(d, name, clean_cost)
        elif name == "server_address":
            if value is not None:
                if type(value) is not str:
                    raise ConfigurationError(f"UsageRecord.server_address must be a string or "
                                             f"None, got {type(value).__name__}")
                d.server_address = bounded(value)
        elif name == "audio_seconds":
            if not (type(value) is float and 0.0 <= value <= MAX_COUNT):
                if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                        0 <= value <= MAX_COUNT):
                    d.audio_seconds = float(value)
                else:
                    bad.append("audio_seconds")
                    d.audio_seconds = 0.0
        elif name == "latency_ms":
            if value is not None and not (
                    isinstance(value, (int, float)) and 0 <= value <= MAX_COUNT):
                bad.append("latency_ms")
                d.latency_ms = None
        elif name == "timestamp":
            if value is not None:
                if value.tzinfo is None:
                    d.timestamp = value.replace(tzinfo=UTC)
                elif value.tzinfo is not UTC:
                    d.timestamp = value.astimezone(UTC)
        elif name == "tags":
            tags = value if type(value) is tuple else tuple(value)
            if tags and not all(_plain(tag) for tag in tags):
                tags = tuple(bounded(str(tag)) for tag in tags)
            d.tags = tags
        elif name == "scopes":
            scopes = value if type(value) is dict else dict(value)
            if len(scopes) > MAX_SCOPES:
                scopes = _first_scopes(scopes)
            if scopes and not all(_plain(k) and _plain(v) for k, v in scopes.items()):
                scopes = {bounded(str(k)): bounded(str(v)) for k, v in scopes.items()}
            d.scopes = scopes

    # Sub-counts are parts of their totals: never larger.
    inputs, outputs = d.input_tokens, d.output_tokens
    if d.cached_input_tokens or d.cache_write_tokens or d.audio_input_tokens:
        if d.cached_input_tokens > inputs:
            bad.append("cached_input_tokens")
            d.cached_input_tokens = inputs
        if d.cache_write_tokens > inputs - d.cached_input_tokens:
            bad.append("cache_write_tokens")
            d.cache_write_tokens = inputs - d.cached_input_tokens
        if d.audio_input_tokens > inputs:
            bad.append("audio_input_tokens")
            d.audio_input_tokens = inputs
    if d.cache_write_1h_tokens > d.cache_write_tokens:
        bad.append("cache_write_1h_tokens")
        d.cache_write_1h_tokens = d.cache_write_tokens
    if d.reasoning_tokens > outputs:
        bad.append("reasoning_tokens")
        d.reasoning_tokens = outputs
    if d.audio_output_tokens > outputs:
        bad.append("audio_output_tokens")
        d.audio_output_tokens = outputs
    parts = inputs + outputs
    if d.total_tokens < parts:
        if d.total_tokens != 0:
            bad.append("total_tokens")
        d.total_tokens = parts

    if bad:
        d.invalid_fields = (*d.invalid_fields, *bad)
        logger.warning(
            "quota-hooks: untrusted usage values replaced in a %s record for model %r "
            "(workspace %r): %s", d.source, d.model, d.workspace_id, ", ".join(bad),
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a call is expected to use, before it is sent: what ``acquire`` reserves.

    Give the token counts yourself (``input_tokens``/``output_tokens``; one left out is 0),
    or give none and the facts of the request, and the manager works the counts out
    (:meth:`QuotaManager.estimate <quota_hooks.QuotaManager.estimate>`): ``prompt_size`` (its
    bytes or characters; prompt tokens come from the manager's ``token_estimator``) and
    ``max_tokens`` (the output it asks for at most; unset, the policy's ``default_max_tokens``
    for a method that generates text).
    """

    model: str = "unknown"
    api_method: str = "chat.completions"
    input_tokens: int | None = None
    """Prompt tokens; with both counts ``None``, from ``prompt_size``."""
    output_tokens: int | None = None
    """Output tokens; with both counts ``None``, ``max_tokens``, else the policy's
    ``default_max_tokens`` for chat completions, completions and responses, else 0."""
    provider: str | None = None
    """The provider the call goes to, when known (the price of a model depends on it)."""
    images: int = 0
    """Images the request asks for (``n`` of an image generation)."""
    image_size: str | None = None
    image_quality: str | None = None
    characters: int = 0
    """Characters of text to speak (a speech request)."""
    prompt_size: int = 0
    """Bytes (or characters) of the request's prompt."""
    max_tokens: int | None = None
    """The output tokens the request asks for at most (``max_tokens``,
    ``max_completion_tokens``, ``max_output_tokens``)."""

    @property
    def tokens(self) -> int:
        """Input plus output tokens (0 for a count not worked out yet)."""
        return (self.input_tokens or 0) + (self.output_tokens or 0)


def estimate_tokens(text: str | bytes | int) -> int:
    """The default prompt-token estimator: one token per 4 bytes (or characters), rounded up.

    Takes the prompt's size (or the prompt itself). Replace it with
    ``QuotaManager.token_estimator = ...`` (a function of the size); quota-hooks never
    downloads a tokenizer. The estimate only sizes a reservation: the call is counted at the
    provider's own numbers.
    """
    size = text if isinstance(text, int) else len(text)
    return -(-size // 4)


#: The token fields of a record, in :func:`reported_usage`'s order.
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "audio_input_tokens",
    "reasoning_tokens",
    "audio_output_tokens",
    "image_input_tokens",
    "image_output_tokens",
)
_INPUT_PARTS = ("cached_input_tokens", "cache_write_tokens", "audio_input_tokens")
_OUTPUT_PARTS = ("reasoning_tokens", "audio_output_tokens")


def reported_usage(
    reported: Mapping[str, Any] | None, estimate: Estimate | Callable[[], Estimate], *,
    observed_output: int = 0,
) -> dict[str, Any]:
    """The token fields of a record: what the provider ``reported`` when it can be trusted,
    else ``estimate``. The one usage rule of every adapter.

    ``reported`` holds :data:`TOKEN_FIELDS` (and ``total_tokens``) as the provider sent them,
    ``None`` where it sent null or nothing. It is trusted when ``input_tokens`` and
    ``output_tokens`` are whole numbers in ``[0, 2**40]`` (``output_tokens`` may be absent for
    APIs without output, like embeddings), every detail count present is one too, and each
    part fits its total (cached + cache-write tokens and audio + image tokens within the
    input, reasoning and audio + image tokens within the output) and the request, if it was
    not empty, used some input tokens (a provider or framework that lost the usage often
    fills in zeros). Otherwise the call settles at its estimate: the estimate's input and
    output tokens (the output at least ``observed_output``, what the caller was seen to
    receive), but never below a count that was itself valid; ``estimated`` is True and
    ``estimate_reason`` says why.

    ``estimate`` may be a function that makes it, called only when the rule needs it (a
    trusted usage with input tokens never does).

    Returns :class:`UsageRecord` keyword arguments.
    """
    def the_estimate() -> Estimate:
        nonlocal estimate
        if not isinstance(estimate, Estimate):
            estimate = estimate()  # made once, only when the rule needs it
        return estimate

    if not reported or (
        reported.get("input_tokens") is None and reported.get("output_tokens") is None
    ):
        return _estimated(the_estimate(), observed_output, {}, "no usage reported")
    clean: dict[str, int] = {}
    bad: list[str] = []
    for name in TOKEN_FIELDS:
        value = reported.get(name)
        if value is None:
            if name == "input_tokens" or (name == "output_tokens"
                                          and the_estimate().output_tokens):
                bad.append(f"{name}=null")
            continue
        count = _clean_int(value)
        if count is None:
            bad.append(f"{name}={_shown(value)}")
        else:
            clean[name] = count
    inputs, outputs = clean.get("input_tokens", 0), clean.get("output_tokens", 0)
    if "input_tokens" in clean and sum(clean.get(p, 0) for p in _INPUT_PARTS[:2]) > inputs:
        bad.append("cached and cache-write tokens above input_tokens")
    if clean.get("cache_write_1h_tokens", 0) > clean.get("cache_write_tokens", 0):
        bad.append("1-hour cache writes above cache_write_tokens")
    if "output_tokens" in clean and clean.get("reasoning_tokens", 0) > outputs:
        bad.append("reasoning_tokens above output_tokens")
    if "input_tokens" in clean and clean.get("audio_input_tokens", 0) + clean.get(
            "image_input_tokens", 0) > inputs:
        bad.append("audio and image input tokens above input_tokens")
    if "output_tokens" in clean and clean.get("audio_output_tokens", 0) + clean.get(
            "image_output_tokens", 0) > outputs:
        bad.append("audio and image output tokens above output_tokens")
    if not bad and inputs == 0 and _count_of(the_estimate().input_tokens) > 0:
        bad.append("0 input tokens for a request that was not empty")  # a filler, not a count
    if bad:
        return _estimated(the_estimate(), observed_output, clean,
                          "untrusted usage: " + ", ".join(bad))
    fields: dict[str, Any] = dict(clean)
    total = _clean_int(reported.get("total_tokens"))
    if total is not None and reported.get("total_tokens") is not None:
        fields["total_tokens"] = total
    return fields


def _estimated(
    estimate: Estimate, observed_output: int, clean: Mapping[str, int], reason: str
) -> dict[str, Any]:
    """The fields of a call that settles at its estimate (valid counts are lower bounds)."""
    inputs = max(_count_of(estimate.input_tokens), clean.get("input_tokens", 0))
    outputs = max(
        _count_of(estimate.output_tokens),
        observed_output,
        clean.get("output_tokens", 0),
        clean.get("reasoning_tokens", 0),
    )
    fields: dict[str, Any] = {
        "input_tokens": inputs,
        "output_tokens": outputs,
        "estimated": True,
        "estimate_reason": reason,
    }
    room = inputs
    for name in ("cached_input_tokens", "cache_write_tokens"):
        part = min(clean.get(name, 0), room)
        if part:
            fields[name] = part
            room -= part
    hour = min(clean.get("cache_write_1h_tokens", 0), fields.get("cache_write_tokens", 0))
    if hour:
        fields["cache_write_1h_tokens"] = hour
    for name, limit in (("audio_input_tokens", inputs), ("reasoning_tokens", outputs),
                        ("audio_output_tokens", outputs), ("image_input_tokens", inputs),
                        ("image_output_tokens", outputs)):
        part = min(clean.get(name, 0), limit)
        if part:
            fields[name] = part
    return fields


def _count_of(value: int | None) -> int:
    clean = _clean_int(value)
    return 0 if clean is None else clean


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _plain(text: object) -> bool:
    """A name kept as it is: a short ASCII string."""
    return type(text) is str and len(text) <= MAX_NAME_LENGTH and text.isascii()


def _clean_int(value: object) -> int | None:
    """A trusted whole count, or None when the value must not be trusted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_COUNT else None
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and 0 <= value <= MAX_COUNT:
            return int(value)
        return None
    if isinstance(value, Decimal):
        if value.is_finite() and value == value.to_integral_value() and 0 <= value <= MAX_COUNT:
            return int(value)
        return None
    if value is None:
        return 0
    return None


def _clean_cost(value: object) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, str, Decimal)):
        try:
            cost = Decimal(str(value)) if not isinstance(value, Decimal) else value
        except ArithmeticError:
            return None
        if cost.is_finite() and 0 <= cost <= MAX_COST:
            return cost
    return None
