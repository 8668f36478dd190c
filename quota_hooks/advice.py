"""Cheaper-model advice: this period's real token mix, repriced on other models.

Pure arithmetic, no I/O: for each model a workspace used, its :class:`TokenMix` (requests,
input, cached, cache-write, output and reasoning tokens) is priced at its own price and at
the price of each other model of the same provider that genai-prices lists and bills for the
same kinds of units; :func:`advise` lists the costs side by side with the saving. It is the
same token mix repriced: it says nothing about quality, nor about whether another model would
have used the same tokens (a model that does not reason would not have produced the
reasoning tokens, say).

What "the same capabilities" means here
---------------------------------------
genai-prices 0.2 records **no capabilities**: a model has prices, a context window, a
``deprecated`` flag and a prose description, but no chat, reasoning or vision flag. So nothing
here claims one. Two models are comparable when genai-prices bills them for the same kinds of
units (:func:`billed_units`): input tokens, output tokens, audio, images, video, characters,
document pages. A chat model (input and output tokens) is thus compared with chat models, not
with an embedding model (input tokens only), a realtime model (audio and image tokens too),
an image model, text-to-speech (characters) or transcription (audio hours). Cache, tool
(web search) and per-request prices are not kinds of units: a model without a cache price
bills cached tokens as input, and tool calls are not part of a token mix. Candidates are
further limited to the provider's own list, not deprecated, not fine-tune prices (``ft:...``,
``....ft-``: they apply to one's own fine-tunes only), and with a context window (where known)
at least the average request's input.

That cannot tell a model that takes images from one that does not (genai-prices bills image
input of gpt-4o and gpt-3.5-turbo alike, as input tokens), nor a reasoning model from another.
Who knows better passes ``capabilities``: labels per model (``{"gpt-4o": {"chat", "vision"}}``);
then only the models it lists are candidates, and each must carry every label of the model used.

Pricing
-------
Costs are exact (pico-dollar integers or fractions, shown as ``Decimal`` USD), from the same
:class:`~quota_hooks.pricing.PriceBook` the manager charges with (overrides win), every model
at the same moment ``when`` (now by default) at its standard price (no service tier, no
batch): the model used is repriced from its mix too, so that the comparison is like for like
(what a budget recorded for it may differ: service tiers, batch, tiers per request). A mix
keeps no request sizes, so a tiered price is taken at the tier of the average request's input.
A model that cannot be priced is listed as unpriced, never as free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ._rates import Rates, pico_to_usd
from .pricing import PriceBook, format_usd

if TYPE_CHECKING:
    from .storage.base import Aggregate
    from .usage import UsageRecord

__all__ = [
    "NO_QUALITY_CLAIM",
    "Advice",
    "Alternative",
    "ModelAdvice",
    "TokenMix",
    "advise",
    "billed_units",
    "format_advice",
    "mixes_from_breakdown",
    "mixes_from_records",
]

#: What every piece of advice says about itself.
NO_QUALITY_CLAIM = "same token mix repriced; says nothing about quality"

#: The kind of unit each genai-prices price key bills; keys in :data:`_NOT_UNITS` are none.
#: A key that is in neither (a later genai-prices) is its own kind: a model billed for
#: something unknown here is only compared with models billed for it too.
_UNIT_OF_PRICE = {
    "input_mtok": "input tokens",
    "output_mtok": "output tokens",
    "input_audio_mtok": "audio input",
    "cache_audio_read_mtok": "audio input",
    "input_audio_hours": "audio input",
    "audio_hours": "audio input",
    "output_audio_mtok": "audio output",
    "input_image_mtok": "image input",
    "cache_image_read_mtok": "image input",
    "output_image_mtok": "image output",
    "input_video_mtok": "video input",
    "output_video_mtok": "video output",
    "input_mchars": "characters",
    "input_document_kpages": "document pages",
    "input_annotated_document_kpages": "document pages",
    "input_text_messages_kcount": "text messages",
}
#: Price keys that bill no kind of unit: caches, tools, requests, parts of output.
_NOT_UNITS = frozenset({
    "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok", "web_searches_kcount",
    "storage_searches_kcount", "requests_kcount", "output_reasoning_mtok",
    "output_citation_mtok",
})
_PERCENT = Decimal("0.1")


@dataclass(frozen=True, slots=True)
class TokenMix:
    """The tokens a model used over a period, by kind.

    The counts follow :class:`~quota_hooks.UsageRecord`'s (OpenAI's) convention:
    ``input_tokens`` *includes* ``cached_input_tokens`` and ``cache_write_tokens``;
    ``output_tokens`` *includes* ``reasoning_tokens``.
    """

    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    """Input tokens read from a prompt cache (part of ``input_tokens``)."""
    cache_write_tokens: int = 0
    """Input tokens written to a prompt cache (part of ``input_tokens``)."""
    output_tokens: int = 0
    reasoning_tokens: int = 0
    """Reasoning tokens (part of ``output_tokens``)."""

    def __post_init__(self) -> None:
        for name in ("requests", "input_tokens", "cached_input_tokens", "cache_write_tokens",
                     "output_tokens", "reasoning_tokens"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"TokenMix.{name} must be a whole number >= 0, not {value!r}")
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError("TokenMix: cached and cache-write tokens are part of input_tokens")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("TokenMix: reasoning tokens are part of output_tokens")

    @classmethod
    def of(cls, record: UsageRecord) -> TokenMix:
        """The mix of one record (one request)."""
        return cls(1, record.input_tokens, record.cached_input_tokens, record.cache_write_tokens,
                   record.output_tokens, record.reasoning_tokens)

    def __add__(self, other: TokenMix) -> TokenMix:
        return TokenMix(
            self.requests + other.requests, self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens)

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "input_tokens": self.input_tokens,
                "cached_input_tokens": self.cached_input_tokens,
                "cache_write_tokens": self.cache_write_tokens,
                "output_tokens": self.output_tokens, "reasoning_tokens": self.reasoning_tokens}


@dataclass(frozen=True, slots=True)
class Alternative:
    """Another model's cost for the same mix."""

    model: str
    """genai-prices' model id (``"gpt-4o-mini"``)."""
    priced_as: str
    """The price's key (``"openai:gpt-4o-mini"``, or an override's name)."""
    cost_usd: Decimal
    saving_usd: Decimal
    """The model used's cost minus this one (negative: dearer)."""
    saving_percent: Decimal | None
    """``saving_usd`` as a percent of the model used's cost, to 0.1; None when that is $0."""

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "priced_as": self.priced_as,
                "cost_usd": _text(self.cost_usd), "saving_usd": _text(self.saving_usd),
                "saving_percent": None if self.saving_percent is None
                else float(self.saving_percent)}


@dataclass(frozen=True, slots=True)
class ModelAdvice:
    """One model used: its mix, its cost, and the other models' costs for the same mix."""

    model: str
    """The model's name as recorded."""
    mix: TokenMix
    provider: str | None
    """genai-prices' provider id, or None when genai-prices does not know the model."""
    priced_as: str | None
    """The price's key (``"openai:gpt-4o"``), or None when unpriced."""
    cost_usd: Decimal | None
    """The mix at the model's own price; None when the model cannot be priced (never $0)."""
    billed_for: frozenset[str] = frozenset()
    """The kinds of units genai-prices bills the model for (:func:`billed_units`)."""
    alternatives: tuple[Alternative, ...] = ()
    """Cheapest first."""
    unpriced_alternatives: tuple[str, ...] = ()
    """Comparable models that could not price this mix."""
    note: str | None = None
    """Why there is no advice (unpriced, unknown provider ...), or None."""

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None

    @property
    def cheapest(self) -> Alternative | None:
        """The cheapest alternative when it saves money, else None."""
        if self.alternatives and self.alternatives[0].saving_usd > 0:
            return self.alternatives[0]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "provider": self.provider, "priced_as": self.priced_as,
                "mix": self.mix.to_dict(),
                "cost_usd": None if self.cost_usd is None else _text(self.cost_usd),
                "billed_for": sorted(self.billed_for),
                "alternatives": [a.to_dict() for a in self.alternatives],
                "unpriced_alternatives": list(self.unpriced_alternatives), "note": self.note}


@dataclass(frozen=True, slots=True)
class Advice:
    """The advice for a set of mixes (:func:`advise`)."""

    models: tuple[ModelAdvice, ...]
    """Dearest first; the unpriced last."""
    when: datetime
    """The moment every price was taken at."""
    source: str
    """Where the prices come from (``"genai-prices 0.2.3"``)."""
    disclaimer: str = field(default=NO_QUALITY_CLAIM)

    @property
    def unpriced(self) -> tuple[str, ...]:
        """The models used that could not be priced."""
        return tuple(m.model for m in self.models if m.cost_usd is None)

    @property
    def cost_usd(self) -> Decimal:
        """What the priced models' mixes cost at their own prices."""
        return sum((m.cost_usd for m in self.models if m.cost_usd is not None), Decimal(0))

    @property
    def best_saving_usd(self) -> Decimal:
        """The saving had each priced model been its cheapest alternative."""
        return sum((m.cheapest.saving_usd for m in self.models if m.cheapest is not None),
                   Decimal(0))

    def to_dict(self) -> dict[str, Any]:
        return {"when": self.when.isoformat(), "source": self.source,
                "disclaimer": self.disclaimer, "cost_usd": _text(self.cost_usd),
                "best_saving_usd": _text(self.best_saving_usd),
                "unpriced": list(self.unpriced), "models": [m.to_dict() for m in self.models]}


def _text(usd: Decimal) -> str:
    """Exact USD as a JSON string, without an exponent (``"0.000375"``)."""
    return f"{usd.normalize():f}" if usd else "0"


def mixes_from_breakdown(breakdown: Mapping[str, Aggregate]) -> dict[str, TokenMix]:
    """Mixes from a month's breakdown by model (``Store.breakdown(scope, month, "model")``),
    which keeps the whole mix: input (with cached and cache-write) and output (with
    reasoning). Rows recorded by a quota-hooks older than that have 0 cached, cache-write and
    reasoning tokens (they are repriced as plain input and output). The ``"(other)"`` row
    (the models beyond the breakdown's limit) is kept: no model prices it, so it shows as
    unpriced.
    """
    return {name: TokenMix(requests=row.requests, input_tokens=row.input_tokens,
                           cached_input_tokens=row.cached_input_tokens,
                           cache_write_tokens=row.cache_write_tokens,
                           output_tokens=row.output_tokens,
                           reasoning_tokens=row.reasoning_tokens)
            for name, row in breakdown.items()}


def mixes_from_records(records: Iterable[UsageRecord]) -> dict[str, TokenMix]:
    """Mixes by model from records (each record is one request; cached, cache-write and
    reasoning tokens kept)."""
    mixes: dict[str, TokenMix] = {}
    for record in records:
        mix = TokenMix.of(record)
        mixes[record.model] = mixes[record.model] + mix if record.model in mixes else mix
    return mixes


def billed_units(price: Any) -> frozenset[str]:
    """The kinds of units a genai-prices ``ModelPrice`` bills (see the module doc): the
    stand-in for capabilities, which genai-prices does not record."""
    kinds = set()
    for key, value in vars(price).items():
        if value is None or key.startswith("_") or key in _NOT_UNITS:
            continue
        kinds.add(_UNIT_OF_PRICE.get(key, key))
    return frozenset(kinds)


def _pico(rates: Rates, mix: TokenMix) -> int | Fraction | None:
    """The mix's cost at ``rates`` (pico-dollars), the tier taken at the average request's
    input; None when the rates price no input or no output tokens and the mix has some."""
    if (mix.input_tokens and "input_tokens" not in rates.priced) or (
            mix.output_tokens and "output_tokens" not in rates.priced):
        return None
    requests = mix.requests or (1 if mix.tokens else 0)
    level = rates.level(mix.input_tokens // requests) if requests else 0
    counts = mix.to_dict()
    total: int | Fraction = rates.constants[level] * requests
    for name, coefficient in rates.tables[level]:
        count = counts.get(name, 0)
        if count:
            total += coefficient * count
    return total


def _usd(pico: int | Fraction) -> Decimal:
    return pico_to_usd(pico) if pico else Decimal(0)


def _is_fine_tune(model_id: str) -> bool:
    return model_id.lower().startswith("ft:") or ".ft-" in model_id.lower()


def advise(mixes: Mapping[str, TokenMix], prices: PriceBook, *, provider: str | None = None,
           when: datetime | None = None,
           capabilities: Mapping[str, Iterable[str]] | None = None,
           cheaper_only: bool = True) -> Advice:
    """Reprice each model's mix on the comparable models of its provider.

    Args:
        mixes: the period's mix per model, keyed by the model's name as recorded.
        prices: the price book (the manager's, so that overrides count).
        provider: the provider the models were called at (an adapter's name or
            genai-prices' id); None: each model's provider is what genai-prices finds by
            its name.
        when: the moment every price is taken at (now).
        capabilities: your own labels per model name (genai-prices has none): when given,
            a candidate must be listed here with every label of the model used.
        cheaper_only: list only the alternatives that cost less than the model used.

    Returns:
        :class:`Advice`: per model its cost and the alternatives, cheapest first.
    """
    moment = when or datetime.now(UTC)
    labels = None if capabilities is None else {
        name.lower(): frozenset(found) for name, found in capabilities.items()}
    advice = [_advise_one(name, mix, prices, provider, moment, labels, cheaper_only)
              for name, mix in mixes.items()]
    advice.sort(key=lambda m: (m.cost_usd is None, -(m.cost_usd or 0), m.model))
    source = prices.genai.label if prices.genai is not None else prices.source
    return Advice(tuple(advice), moment, source)


def _advise_one(name: str, mix: TokenMix, prices: PriceBook, provider: str | None,
                when: datetime, labels: Mapping[str, frozenset[str]] | None,
                cheaper_only: bool) -> ModelAdvice:
    rates = prices.rates(name, provider, when=when)
    if rates is not None and rates.key == "fallback":  # a fault's stand-in, not a price
        rates = None
    pico = None if rates is None else _pico(rates, mix)
    found = None if prices.genai is None else prices.genai.model(name, provider)
    pid = None if found is None else str(found[0].id)
    if rates is None or pico is None:
        why = "no price for this model" if rates is None else (
            f"{rates.key} prices no input or no output tokens")
        return ModelAdvice(name, mix, pid, None if rates is None else rates.key, None,
                           note=f"unpriced: {why}")
    own = ModelAdvice(name, mix, pid, rates.key, _usd(pico))
    if found is None or prices.genai is None:
        return _with(own, note="genai-prices does not list this model: no models to compare")
    info, model, _ = found
    units = billed_units(model.get_prices(when))
    required = frozenset() if labels is None else labels.get(
        name.lower(), labels.get(str(model.id).lower(), frozenset()))
    average_input = mix.input_tokens // max(mix.requests, 1)
    alternatives: list[Alternative] = []
    unpriced: list[str] = []
    for candidate in info.models:
        cid = str(candidate.id)
        if candidate is model or candidate.deprecated or _is_fine_tune(cid):
            continue
        if labels is not None:
            listed = labels.get(cid.lower())
            if listed is None or not required <= listed:
                continue
        if candidate.context_window is not None and average_input > candidate.context_window:
            continue
        price = candidate.get_prices(when)
        if billed_units(price) != units:
            continue
        try:
            if prices.resolve(cid) is not None:  # an override of yours prices it
                theirs = prices.rates(cid, pid, when=when)
            else:
                theirs = prices.genai.rates((info, candidate, True), when, None)
        except Exception:  # an odd price must not stop the advice on the others
            theirs = None
        cost = None if theirs is None else _pico(theirs, mix)
        if theirs is None or cost is None:
            unpriced.append(cid)
            continue
        saving = pico - cost
        if cheaper_only and saving <= 0:
            continue
        percent = _percent(saving, pico)
        alternatives.append(Alternative(cid, theirs.key, _usd(cost), _usd(saving), percent))
    alternatives.sort(key=lambda a: (a.cost_usd, a.model))
    return _with(own, billed_for=units, alternatives=tuple(alternatives),
                 unpriced_alternatives=tuple(sorted(unpriced)))


def _with(advice: ModelAdvice, **changes: Any) -> ModelAdvice:
    return replace(advice, **changes)


def _percent(part: int | Fraction, whole: int | Fraction) -> Decimal | None:
    """``part`` as a percent of ``whole``, to 0.1 (half-even); None when ``whole`` is 0."""
    if not whole:
        return None
    ratio = Fraction(part) * 100 / Fraction(whole)
    return (Decimal(ratio.numerator) / Decimal(ratio.denominator)).quantize(
        _PERCENT, rounding=ROUND_HALF_EVEN)


def _signed_usd(amount: Decimal) -> str:
    """:func:`~quota_hooks.pricing.format_usd` with a sign in front: ``-$0.50``."""
    return "-" + format_usd(-amount) if amount < 0 else format_usd(amount)


def format_advice(advice: Advice, *, limit: int = 5) -> str:
    """The advice as a plain-text table for a terminal: per model, its mix, its cost and its
    ``limit`` cheapest alternatives with the saving."""
    lines = [f"Cheaper models: {NO_QUALITY_CLAIM}.",
             f"Prices: {advice.source}, at {advice.when:%Y-%m-%d %H:%M} UTC; each model at "
             "its standard price."]
    if not advice.models:
        lines.append("No usage in this period: nothing to reprice.")
        return "\n".join(lines)
    for item in advice.models:
        mix = item.mix
        lines += ["", f"{item.model}" + (f" (priced as {item.priced_as})" if item.priced_as
                                         else ""),
                  f"  {mix.requests:,} requests; input {mix.input_tokens:,} tokens (cached "
                  f"{mix.cached_input_tokens:,}, cache writes {mix.cache_write_tokens:,}); "
                  f"output {mix.output_tokens:,} (reasoning {mix.reasoning_tokens:,})"]
        if item.cost_usd is None:
            lines.append(f"  cost: unknown ({item.note or 'unpriced'}), not $0")
            continue
        lines.append(f"  cost at its own price: {format_usd(item.cost_usd)}")
        if not item.alternatives:
            lines.append(f"  {item.note or 'no cheaper model bills for the same units'}")
            continue
        shown = item.alternatives[:max(limit, 0)]
        width = max([len("model"), *(len(a.priced_as) for a in shown)])
        lines.append(f"  {'model':<{width}}  {'cost':>14}  {'saving':>14}  {'saving %':>8}")
        for alt in shown:
            percent = "-" if alt.saving_percent is None else f"{alt.saving_percent}%"
            lines.append(f"  {alt.priced_as:<{width}}  {format_usd(alt.cost_usd):>14}  "
                         f"{_signed_usd(alt.saving_usd):>14}  {percent:>8}")
        if len(item.alternatives) > len(shown):
            lines.append(f"  ... and {len(item.alternatives) - len(shown)} more")
        if mix.reasoning_tokens:
            lines.append("  (the reasoning tokens are repriced as they are: a model that does "
                         "not reason would not produce them)")
    unpriced = advice.unpriced
    lines += ["", f"Total at own prices: {format_usd(advice.cost_usd)}"
              + (f" (and {len(unpriced)} unpriced model(s): {', '.join(unpriced)})"
                 if unpriced else "")
              + f"; each at its cheapest alternative: saves {format_usd(advice.best_saving_usd)}."]
    return "\n".join(lines)
