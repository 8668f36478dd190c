"""`PriceBook`: what a call costs, exactly.

Prices are USD per 1M tokens (plus per image, per audio minute and per 1M characters for the
models billed that way), kept as ``Decimal``. Costs are exact ``Decimal`` USD; running totals are
kept by the stores as integer nano-dollars (:func:`to_nanos`). Floats never carry money.

The bundled table (``quota_hooks/data/prices.json``) has an ``as_of`` date and a source. Override
it with a dict, a JSON file of the same shape, or the ``QUOTA_HOOKS_PRICES_FILE`` environment
variable. A model the book does not know is priced ``None`` (``priced=False``), never $0, with one
warning per model.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigurationError
from .usage import UsageRecord

__all__ = [
    "NANOS_PER_USD",
    "Cost",
    "ModelPrice",
    "PriceBook",
    "estimate_cost",
    "format_usd",
    "from_nanos",
    "to_nanos",
]

logger = logging.getLogger("quota_hooks")

NANOS_PER_USD = 1_000_000_000
_PER_MILLION = Decimal(1_000_000)
_SECONDS_PER_MINUTE = Decimal(60)
_NANO = Decimal("1e-9")
PRICES_FILE_ENV = "QUOTA_HOOKS_PRICES_FILE"

_Price = Decimal | None
_DATED_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def to_nanos(usd: Decimal) -> int:
    """USD as a ``Decimal`` to integer nano-dollars (half-even rounding below a nano-dollar)."""
    return int((usd / _NANO).to_integral_value(rounding=ROUND_HALF_EVEN))


def format_usd(amount: int | Decimal) -> str:
    """Dollars for people: cents always, sub-cent digits when they matter (to a micro-dollar):
    ``$12.50``, ``$0.0033``."""
    value = Decimal(amount).quantize(Decimal("0.000001")).normalize()
    exponent = value.as_tuple().exponent
    places = max(2, -exponent if isinstance(exponent, int) else 2)
    return f"${value:.{places}f}"


def from_nanos(nanos: int) -> Decimal:
    """Integer nano-dollars back to exact USD."""
    return Decimal(nanos).scaleb(-9)


class ModelPrice(BaseModel):
    """The prices of one model. Token prices are USD per 1M tokens.

    ``cached_input``, ``cache_write`` and ``audio_input`` fall back to ``input`` when absent;
    ``audio_output`` falls back to ``output``. ``per_image`` is keyed ``"quality/size"``, e.g.
    ``"hd/1024x1792"``. ``fine_tuned`` holds the prices of fine-tunes of this model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: _Price = Field(default=None, ge=0)
    cached_input: _Price = Field(default=None, ge=0)
    cache_write: _Price = Field(default=None, ge=0)
    output: _Price = Field(default=None, ge=0)
    audio_input: _Price = Field(default=None, ge=0)
    audio_output: _Price = Field(default=None, ge=0)
    per_image: dict[str, Decimal] = Field(default_factory=dict)
    per_minute: _Price = Field(default=None, ge=0)
    per_1m_characters: _Price = Field(default=None, ge=0)
    fine_tuned: ModelPrice | None = None


@dataclass(frozen=True, slots=True)
class Cost:
    """The price of one record: ``usd`` is ``None`` when the model could not be priced."""

    usd: Decimal | None
    source: str
    model: str | None = None

    @property
    def priced(self) -> bool:
        """True when ``usd`` is a real price, not unknown."""
        return self.usd is not None

    @property
    def nanos(self) -> int | None:
        """``usd`` as integer nano-dollars."""
        return None if self.usd is None else to_nanos(self.usd)


class PriceBook:
    """Model name to prices, and the cost of a :class:`UsageRecord`.

    Names resolve through, in order: the exact (lower-cased) name, aliases, a provider prefix
    (``openai/``, ``azure/`` ...), a fine-tune (``ft:gpt-4o-mini:org::id`` uses the base model's
    fine-tune prices, else its base prices) and a dated snapshot suffix (``gpt-4o-2024-08-06``,
    ``gpt-4-0613``).
    """

    def __init__(
        self,
        prices: Mapping[str, ModelPrice | Mapping[str, Any]],
        *,
        aliases: Mapping[str, str] | None = None,
        source: str = "custom",
        as_of: str | None = None,
        fallback: ModelPrice | Mapping[str, Any] | None = None,
    ) -> None:
        self._prices: dict[str, ModelPrice] = {
            name.lower(): _parse_price(name, price, source) for name, price in prices.items()
        }
        self._fallback = None if fallback is None else _parse_price("fallback", fallback, source)
        self._dearest: ModelPrice | None = None
        self._aliases = {k.lower(): v.lower() for k, v in (aliases or {}).items()}
        self.source = source
        self.as_of = as_of
        self._sources: dict[str, str] = {}
        self._resolved: dict[str, tuple[str, ModelPrice] | None] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._rates: dict[str, tuple[int, int] | None] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def bundled(cls) -> PriceBook:
        """The price table shipped with quota-hooks."""
        text = resources.files("quota_hooks").joinpath("data/prices.json").read_text("utf-8")
        return cls._from_document(json.loads(text), origin="bundled")

    @classmethod
    def default(cls) -> PriceBook:
        """The bundled table, overridden by ``QUOTA_HOOKS_PRICES_FILE`` when it is set."""
        book = cls.bundled()
        path = os.environ.get(PRICES_FILE_ENV, "").strip()
        if path:
            book = book.with_overrides(cls.from_file(path, _env=True))
        return book

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, _env: bool = False) -> PriceBook:
        """A price table from a JSON file: ``{"models": {name: prices}, "aliases": {...}}``.

        A file with no ``models`` key is read as ``{name: prices}`` directly.
        """
        where = f"{PRICES_FILE_ENV}={os.fspath(path)!r}" if _env else f"price file {path!s}"
        try:
            document = json.loads(Path(path).read_text("utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"{where}: cannot be read ({exc.strerror})") from exc
        except ValueError as exc:
            raise ConfigurationError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise ConfigurationError(f"{where}: expected a JSON object")
        if "models" not in document:
            document = {"models": document}
        return cls._from_document(document, origin=where)

    @classmethod
    def from_litellm(cls) -> PriceBook:
        """A price table from litellm's model map (``litellm.model_cost``).

        Requires the ``litellm`` extra. Set ``LITELLM_LOCAL_MODEL_COST_MAP=True`` to keep
        ``import litellm`` off the network.
        """
        try:
            import litellm
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "PriceBook.from_litellm() needs litellm: pip install 'quota-hooks[litellm]'"
            ) from exc
        prices: dict[str, ModelPrice] = {}
        for name, entry in litellm.model_cost.items():
            if not isinstance(entry, dict) or name == "sample_spec":
                continue
            price = _price_from_litellm(entry)
            if price is not None:
                prices[name] = price
        return cls(prices, source="litellm")

    @classmethod
    def _from_document(cls, document: Mapping[str, Any], *, origin: str) -> PriceBook:
        models = document.get("models")
        if not isinstance(models, dict):
            raise ConfigurationError(f"{origin}: 'models' must be an object of model prices")
        aliases = document.get("aliases") or {}
        if not isinstance(aliases, dict):
            raise ConfigurationError(f"{origin}: 'aliases' must be an object")
        as_of = document.get("as_of")
        label = origin if as_of is None else f"{origin}:{as_of}"
        return cls(models, aliases=aliases, source=label, as_of=as_of)

    def with_overrides(
        self, overrides: PriceBook | Mapping[str, ModelPrice | Mapping[str, Any]]
    ) -> PriceBook:
        """A new book with ``overrides`` replacing or adding models."""
        if not isinstance(overrides, PriceBook):
            overrides = PriceBook(overrides, source="override")
        merged: dict[str, ModelPrice] = dict(self._prices)
        merged.update(overrides._prices)
        book = PriceBook(merged, aliases={**self._aliases, **overrides._aliases}, as_of=self.as_of,
                         fallback=overrides._fallback or self._fallback)
        book.source = self.source
        book._sources = {**self._sources, **dict.fromkeys(overrides._prices, overrides.source)}
        return book

    def with_fallback(self, price: ModelPrice | Mapping[str, Any]) -> PriceBook:
        """A new book that charges models it cannot price at ``price`` (under a policy with
        ``unpriced="fallback"``), instead of the dearest prices it holds."""
        book = self.with_overrides({})
        book._fallback = _parse_price("fallback", price, "fallback")
        return book

    # ------------------------------------------------------------------ lookup
    def models(self) -> list[str]:
        """Every model name the book prices, sorted."""
        return sorted(self._prices)

    def price(self, model: str) -> ModelPrice | None:
        """The prices of ``model`` after name resolution, or ``None`` if unknown."""
        found = self.resolve(model)
        return None if found is None else found[1]

    def resolve(self, model: str) -> tuple[str, ModelPrice] | None:
        """``(price key, prices)`` for ``model``, or ``None`` when the book does not know it."""
        try:
            return self._resolved[model]
        except KeyError:
            pass
        found = self._lookup(model)
        if len(self._resolved) < 4096:
            self._resolved[model] = found
        return found

    def _lookup(self, model: str) -> tuple[str, ModelPrice] | None:
        name = model.strip().lower()
        fine_tuned = False
        if name.startswith("ft:"):
            parts = name.split(":")
            name, fine_tuned = (parts[1] if len(parts) > 1 else ""), True
        candidates = [name]
        if "/" in name:
            candidates.append(name.rsplit("/", 1)[1])
        for candidate in candidates:
            for key in (candidate, _DATED_SUFFIX.sub("", candidate)):
                key = self._aliases.get(key, key)
                price = self._prices.get(key)
                if price is None:
                    continue
                if fine_tuned:
                    if price.fine_tuned is not None:
                        return f"ft:{key}", price.fine_tuned
                    return f"ft:{key}(base prices)", price
                return key, price
        return None

    def source_of(self, key: str) -> str:
        """Where the prices of a resolved key came from."""
        base = key.removeprefix("ft:").split("(")[0]
        return self._sources.get(base, self.source)

    # ------------------------------------------------------------------ cost
    def cost(self, record: UsageRecord) -> Cost:
        """The exact USD cost of ``record``; ``usd is None`` when it cannot be priced."""
        if not (record.total_tokens or record.images or record.audio_seconds or record.characters):
            return Cost(Decimal(0), "no billable usage")
        found = self.resolve(record.model)
        if found is None:
            return self._unpriced(record.model, "unknown model")
        key, price = found
        usd = _cost(price, record)
        if usd is None:
            return self._unpriced(record.model, f"no price for the units used ({key})")
        return Cost(usd, self.source_of(key), key)

    def estimate_cost(
        self, model: str, input_tokens: int, output_tokens: int = 0
    ) -> Decimal | None:
        """The USD cost of a call with these token counts, or ``None`` for an unknown model."""
        record = UsageRecord(model=model, input_tokens=input_tokens, output_tokens=output_tokens)
        return self.cost(record).usd

    def estimate_nanos(self, model: str, input_tokens: int, output_tokens: int) -> int | None:
        """Nano-dollars a call with these token counts costs at the model's text prices, for
        reservations: integer arithmetic on rates cached per model; ``None`` for a model the
        book does not know (see :meth:`fallback_nanos`). Equals
        ``to_nanos(estimate_cost(...))`` whenever the prices have at most 6 decimals (every
        bundled price); otherwise it falls back to that exact path."""
        rates = self._rates.get(model, _MISSING)
        if rates is _MISSING:
            rates = self._pico_rates(model)
            if len(self._rates) > 4096:
                self._rates.clear()
            self._rates[model] = rates
        if rates is _UNKNOWN:
            return None
        if rates is None:  # a known model: a token kind without a price adds nothing here
            usd = self.estimate_cost(model, input_tokens, output_tokens)
            return 0 if usd is None else to_nanos(usd)
        pico: int = input_tokens * rates[0] + output_tokens * rates[1]  # pico-dollars
        nanos, rest = divmod(pico, 1000)
        return nanos + (rest > 500 or (rest == 500 and nanos % 2 == 1))  # half-even

    # ------------------------------------------------------------------ the unpriced
    def fallback_price(self) -> ModelPrice:
        """The price a call of a model the book cannot price is charged at, under a policy
        with ``unpriced="fallback"``: the one given (:meth:`with_fallback`), else the dearest
        price of each kind that the book holds (input, cached input, cache write, output,
        audio, per image, per minute, per character), so that an unknown model can never
        cost less than a known one."""
        if self._fallback is not None:
            return self._fallback
        if self._dearest is None:
            self._dearest = _dearest(self._prices.values())
        return self._dearest

    def fallback_cost(self, record: UsageRecord) -> Decimal:
        """What ``record`` is charged at :meth:`fallback_price` (an image at the dearest
        image price of any size; a unit that no model in the book prices counts nothing)."""
        price = self.fallback_price()
        if record.images and price.per_image:
            key = f"{record.image_quality or 'standard'}/{record.image_size or '1024x1024'}"
            if key not in price.per_image:
                dearest = max(price.per_image.values())
                price = price.model_copy(update={"per_image": {**price.per_image, key: dearest}})
        usd = _cost(price, record)
        if usd is None:
            usd = _cost(price, replace(record, images=0, audio_seconds=0.0, characters=0))
        return usd if usd is not None else Decimal(0)

    def fallback_nanos(self, input_tokens: int, output_tokens: int) -> int:
        """:meth:`estimate_nanos` at the fallback price, for the reservation of a call whose
        model the book cannot price."""
        price = self.fallback_price()
        total = input_tokens * (price.input or 0) + output_tokens * (price.output or 0)
        return to_nanos(Decimal(total) / _PER_MILLION)

    def _pico_rates(self, model: str) -> tuple[int, int] | None:
        found = self.resolve(model)
        if found is None:
            return _UNKNOWN
        price = found[1]
        if price.input is None or price.output is None:
            return None
        rates = (price.input * _PER_MILLION, price.output * _PER_MILLION)  # USD/1M -> pico/token
        if any(r != r.to_integral_value() for r in rates):
            return None
        return int(rates[0]), int(rates[1])

    def _unpriced(self, model: str, why: str) -> Cost:
        if model not in self._warned:
            with self._lock:
                if model not in self._warned:
                    self._warned.add(model)
                    logger.warning(
                        "quota-hooks: cannot price model %r (%s); its cost is recorded as unknown, "
                        "not $0. Add it with PriceBook.with_overrides() or %s.",
                        model,
                        why,
                        PRICES_FILE_ENV,
                    )
        return Cost(None, "unpriced")


_MISSING: Any = object()
_UNKNOWN: tuple[int, int] = (-1, -1)  # a model the book cannot price (estimate_nanos)


def _dearest(prices: Iterable[ModelPrice]) -> ModelPrice:
    """The highest price of each kind among ``prices`` (fine-tunes included)."""
    every = list(prices)
    every += [p.fine_tuned for p in every if p.fine_tuned is not None]
    fields: dict[str, Any] = {}
    for name in ("input", "cached_input", "cache_write", "output", "audio_input",
                 "audio_output", "per_minute", "per_1m_characters"):
        values = [v for p in every if (v := getattr(p, name)) is not None]
        if values:
            fields[name] = max(values)
    images: dict[str, Decimal] = {}
    for p in every:
        for key, value in p.per_image.items():
            images[key] = max(value, images.get(key, value))
    if images:
        fields["per_image"] = images
    return ModelPrice(**fields)


def _cost(price: ModelPrice, r: UsageRecord) -> Decimal | None:
    """Exact USD for a record under ``price``, or None when a used unit has no price."""
    total = Decimal(0)
    tokens = Decimal(0)
    if r.input_tokens:
        if price.input is None:
            return None
        text_in = max(
            0, r.input_tokens - r.cached_input_tokens - r.cache_write_tokens - r.audio_input_tokens
        )
        tokens += text_in * price.input
        tokens += r.cached_input_tokens * _or(price.cached_input, price.input)
        tokens += r.cache_write_tokens * _or(price.cache_write, price.input)
        tokens += r.audio_input_tokens * _or(price.audio_input, price.input)
    if r.output_tokens:
        if price.output is None:
            return None
        tokens += (r.output_tokens - r.audio_output_tokens) * price.output
        tokens += r.audio_output_tokens * _or(price.audio_output, price.output)
    if tokens:
        total += tokens / _PER_MILLION
    if r.images and not (r.input_tokens or r.output_tokens):
        per_image = price.per_image.get(
            f"{r.image_quality or 'standard'}/{r.image_size or '1024x1024'}"
        )
        if per_image is None:
            return None
        total += r.images * per_image
    if r.audio_seconds and not r.input_tokens:
        if price.per_minute is None:
            return None
        total += Decimal(repr(r.audio_seconds)) / _SECONDS_PER_MINUTE * price.per_minute
    if r.characters and not r.output_tokens:
        if price.per_1m_characters is None:
            return None
        total += r.characters * price.per_1m_characters / _PER_MILLION
    return total


def _or(value: Decimal | None, fallback: Decimal | None) -> Decimal:
    chosen = value if value is not None else fallback
    assert chosen is not None  # callers checked the fallback
    return chosen


def _parse_price(name: str, price: ModelPrice | Mapping[str, Any], origin: str) -> ModelPrice:
    if isinstance(price, ModelPrice):
        return price
    try:
        return ModelPrice.model_validate(price)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(
            f"{origin}: price of model {name!r}, field {field!r}={first.get('input')!r}: "
            f"{first['msg']}"
        ) from exc


def _price_from_litellm(entry: Mapping[str, Any]) -> ModelPrice | None:
    def per_million(key: str) -> Decimal | None:
        value = entry.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            return None
        return Decimal(repr(float(value))) * _PER_MILLION

    fields = {
        "input": per_million("input_cost_per_token"),
        "output": per_million("output_cost_per_token"),
        "cached_input": per_million("cache_read_input_token_cost"),
        "cache_write": per_million("cache_creation_input_token_cost"),
        "audio_input": per_million("input_cost_per_audio_token"),
        "audio_output": per_million("output_cost_per_audio_token"),
    }
    per_second = entry.get("input_cost_per_second")
    if isinstance(per_second, (int, float)) and per_second > 0:
        fields["per_minute"] = Decimal(repr(float(per_second))) * _SECONDS_PER_MINUTE
    if all(v is None for v in fields.values()):
        return None
    return ModelPrice.model_validate({k: v for k, v in fields.items() if v is not None})


@functools.cache
def _default_book() -> PriceBook:
    return PriceBook.default()


def estimate_cost(
    model: str, tokens: int, output_tokens: int = 0, *, prices: PriceBook | None = None
) -> Decimal | None:
    """The seed guide's helper: the USD cost of ``tokens`` input (and ``output_tokens``) tokens.

    Uses the bundled prices unless ``prices`` is given; ``None`` for an unknown model.
    """

    return (prices or _default_book()).estimate_cost(model, tokens, output_tokens)
