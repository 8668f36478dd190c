"""A price compiled for the hot path: integer pico-dollars per unit of each record field.

A model's price is linear in its usage within an input-size tier (genai-prices prices a whole
request at the tier its input reaches: Gemini above 200k input tokens, say). So once per
(provider, model, price in force, service tier) it is compiled into one coefficient per
:class:`~quota_hooks.UsageRecord` field and tier level, and a call is priced by a few integer
multiplications: exact (``Fraction`` where a price has more than six decimals), and far
cheaper than resolving the model again.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from operator import attrgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .usage import UsageRecord

__all__ = ["PICO_PER_USD", "TOP_FIELDS", "Rates", "pico_to_usd"]

PICO_PER_USD = 10**12
#: Record fields that are billed on their own (the others are parts of input or output).
TOP_FIELDS = ("input_tokens", "output_tokens", "images", "audio_seconds", "characters")
#: Record fields a coefficient can apply to, parts included.
FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "audio_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "audio_output_tokens",
    "image_input_tokens",
    "image_output_tokens",
    "characters",
)

Coefficient = int | Fraction


@dataclass(frozen=True, slots=True)
class Rates:
    """A compiled price (see the module doc).

    Attributes:
        key: the name the price was found under (``"openai:gpt-4o"``, ``"my-llm"``).
        source: where it comes from (``"genai-prices 0.2.3"``, an override file ...).
        starts: input-token thresholds of the tiers; level ``i`` applies above ``starts[i-1]``.
        tables: per level, ``(field, pico-dollars per unit)`` pairs.
        constants: per level, pico-dollars per request.
        per_second: pico-dollars per second of audio (``audio_seconds`` is a float).
        per_image: USD per image by ``"quality/size"`` (override tables only).
        min_seconds: the least seconds of audio a request is billed for (Groq bills a
            Whisper request at least 10 s).
        priced: the :data:`TOP_FIELDS` that have a price; a record using another is unpriced.
    """

    key: str
    source: str
    starts: tuple[int, ...]
    tables: tuple[tuple[tuple[str, Coefficient], ...], ...]
    constants: tuple[Coefficient, ...]
    priced: frozenset[str]
    per_second: Fraction | None = None
    per_image: Mapping[str, Decimal] = field(default_factory=dict)
    min_seconds: Fraction | None = None
    # The hot path: the token fields a level prices, read from a record in one C call, with
    # each level's coefficients lined up with them.
    _read: Callable[[Any], Any] = field(init=False, repr=False, compare=False)
    _columns: tuple[tuple[Coefficient, ...], ...] = field(init=False, repr=False,
                                                          compare=False)
    _unpriced_top: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _unpriced_tokens: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # Per level: pico-dollars per input token and per output token (a reservation's price).
    _text: tuple[tuple[Coefficient, Coefficient], ...] = field(init=False, repr=False,
                                                             compare=False)

    def __post_init__(self) -> None:
        fields = tuple(sorted({name for table in self.tables for name, _ in table}
                              - {"characters"}))
        put = object.__setattr__
        if len(fields) > 1:
            put(self, "_read", attrgetter(*fields))
        else:
            put(self, "_read", lambda record: tuple(getattr(record, n) for n in fields))
        put(self, "_columns", tuple(tuple(dict(table).get(name, 0) for name in fields)
                                    for table in self.tables))
        put(self, "_unpriced_top", tuple(n for n in TOP_FIELDS if n not in self.priced))
        put(self, "_unpriced_tokens", tuple(n for n in TOP_FIELDS[:2] if n not in self.priced))
        put(self, "_text", tuple((dict(table).get("input_tokens", 0),
                                  dict(table).get("output_tokens", 0)) for table in self.tables))

    def level(self, input_tokens: int) -> int:
        """The tier level of a request with ``input_tokens`` (0 below every threshold)."""
        return bisect_left(self.starts, input_tokens) if self.starts else 0

    def pico(self, record: UsageRecord) -> Coefficient | None:
        """The cost of ``record`` in pico-dollars; None when it used a unit without a price.

        A record with token usage is priced by its tokens: the images, audio seconds or
        characters it also reports (an image model billed by tokens, a transcription billed
        by tokens) are then what it produced, not what it is billed for.
        """
        tokens = record.input_tokens or record.output_tokens
        for name in self._unpriced_tokens if tokens else self._unpriced_top:
            if getattr(record, name):
                return None
        level = bisect_left(self.starts, record.input_tokens) if self.starts else 0
        total: Coefficient = self.constants[level]
        for coefficient, count in zip(self._columns[level], self._read(record)):  # noqa: B905
            if count:
                total += coefficient * count
        if tokens:
            return total
        for name, coefficient in self.tables[level]:
            if name == "characters" and record.characters:
                total += coefficient * record.characters
        if record.audio_seconds and self.per_second is not None:
            seconds = Fraction(repr(record.audio_seconds))
            if self.min_seconds is not None and seconds < self.min_seconds:
                seconds = self.min_seconds
            total += self.per_second * seconds
        if record.images:
            key = f"{record.image_quality or 'standard'}/{record.image_size or '1024x1024'}"
            per_image = self.per_image.get(key)
            if per_image is None:
                return None
            total += Fraction(per_image) * PICO_PER_USD * record.images
        return total

    def tokens_pico(self, input_tokens: int, output_tokens: int) -> Coefficient | None:
        """The cost of this many text tokens (a reservation's estimate), or None when the
        model has no token price."""
        if (input_tokens and "input_tokens" not in self.priced) or (
                output_tokens and "output_tokens" not in self.priced):
            return None
        level = bisect_left(self.starts, input_tokens) if self.starts else 0
        per_input, per_output = self._text[level]
        total: Coefficient = self.constants[level]
        if per_input:
            total += per_input * input_tokens
        if per_output:
            total += per_output * output_tokens
        return total


_PICO = Decimal("1e-12")


def pico_to_usd(pico: Coefficient) -> Decimal:
    """Pico-dollars as exact USD (a ``Fraction`` to 28 significant digits)."""
    if type(pico) is int:
        return Decimal(pico) * _PICO  # exact: an integer times a power of ten
    if pico.denominator == 1:
        return Decimal(pico.numerator).scaleb(-12)
    return (Decimal(pico.numerator) / Decimal(pico.denominator)).scaleb(-12)


def exact(value: Fraction) -> Coefficient:
    """``value`` as an int when it is whole (the common, fast case)."""
    return value.numerator if value.denominator == 1 else value
