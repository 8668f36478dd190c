"""genai-prices (pydantic's price data for every provider) as the price book's source.

genai-prices resolves a (provider, model) pair, picks the price in force at a time and for a
price context (``service_tier``, batch ``processing``), and prices a usage exactly with
``Decimal``. Doing that on every call costs 65-130 us; here a resolved price is compiled once
into :class:`~quota_hooks._rates.Rates` by pricing a few probe usages with genai-prices
itself (its price is linear in the usage within a tier), and every later call with the same
price in force is a handful of integer multiplications. Compiled prices are checked against
``genai_prices.calc_price`` in the tests, case by case.

Only public names of genai-prices are used: ``DataSnapshot.find_provider`` /
``find_provider_model``, ``ModelInfo.get_prices``, ``ModelPrice.calc_price`` and
``TieredPrices``. genai-prices is imported on first use, never when quota_hooks is.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._fork import renew_after_fork
from ._rates import PICO_PER_USD, Rates, exact

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot

__all__ = ["GenaiSource", "SnapshotInfo", "check_snapshot"]

logger = logging.getLogger("quota_hooks")

#: Provider names that say nothing about which provider it is.
_ANONYMOUS = frozenset({"", "unknown", "openai-compatible", "litellm", "none"})
#: Probe size: a million units, so that per-million prices come out whole.
_M = 1_000_000
#: genai-prices usage key of each record field (parts of a field follow their parent).
_USAGE_KEYS = {
    "input_tokens": "input_tokens",
    "cached_input_tokens": "cache_read_tokens",
    "cache_write_tokens": "cache_write_tokens",
    "cache_write_1h_tokens": "cache_write_1h_tokens",
    "audio_input_tokens": "input_audio_tokens",
    "output_tokens": "output_tokens",
    "reasoning_tokens": "output_reasoning_tokens",
    "audio_output_tokens": "output_audio_tokens",
    "image_input_tokens": "input_image_tokens",
    "image_output_tokens": "output_image_tokens",
    "characters": "input_characters",
}
#: The parents each part must sit inside, in a probe.
_PARTS: dict[str, tuple[str, ...]] = {
    "cached_input_tokens": ("input_tokens",),
    "cache_write_tokens": ("input_tokens",),
    "cache_write_1h_tokens": ("input_tokens", "cache_write_tokens"),
    "audio_input_tokens": ("input_tokens",),
    "reasoning_tokens": ("output_tokens",),
    "audio_output_tokens": ("output_tokens",),
    "image_input_tokens": ("input_tokens",),
    "image_output_tokens": ("output_tokens",),
}
#: Price keys of genai-prices that put a top-level record field under a price.
_PRICED_BY = {
    "input_tokens": ("input_mtok",),
    "output_tokens": ("output_mtok",),
    "characters": ("input_mchars",),
    "audio_seconds": ("audio_hours", "input_audio_hours"),
}
#: A model every usable snapshot prices (``check_snapshot``): a snapshot without it is not a
#: genai-prices snapshot, or not one of this version.
_PROBE_MODEL = ("openai", "gpt-4o-mini")


def _why(exc: BaseException) -> str:
    """An exception as a short reason for a log line (its text cut at 200 characters)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_snapshot(snapshot: DataSnapshot) -> None:
    """Raise ``ValueError`` saying why ``snapshot`` cannot price calls: it has no providers, or
    it does not find and price (above $0) a model every genai-prices snapshot has
    (OpenAI's gpt-4o-mini)."""
    if not snapshot.providers:
        raise ValueError("it holds no providers")
    provider, name = _PROBE_MODEL
    try:
        _, model = snapshot.find_provider_model(name, None, provider, None)
        price = model.get_prices(datetime.now(UTC)).calc_price(
            {"input_tokens": _M, "output_tokens": _M})["total_price"]
    except LookupError as exc:
        raise ValueError(f"it does not list {provider}:{name}") from exc
    except Exception as exc:  # a snapshot of another genai-prices version, say
        raise ValueError(f"it cannot price {provider}:{name} "
                         f"({type(exc).__name__}: {exc})") from exc
    if not price > 0:
        raise ValueError(f"it prices {provider}:{name} at ${price}")


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """Where the prices come from, for people (``quota-hooks prices``)."""

    source: str
    """``"genai-prices 0.2.3 (bundled)"`` or the file of an update."""
    version: str
    fetched_at: str | None
    url: str | None
    providers: int
    models: int


class GenaiSource:
    """One genai-prices snapshot, with the resolution and compilation caches of a book.

    Args:
        snapshot_file: a snapshot written by ``quota-hooks prices --update`` (a JSON list of
            providers, in genai-prices' own format); ``None`` is the snapshot bundled with
            the installed genai-prices.
    """

    def __init__(self, snapshot_file: str | Path | None = None, *, max_cached: int = 4096) -> None:
        self.snapshot_file = None if snapshot_file is None else Path(snapshot_file)
        self._snapshot: DataSnapshot | None = None
        self._meta: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], tuple[Any, Any, bool] | None] = {}
        self._rates: dict[tuple[int, int, int, tuple[tuple[str, str], ...], str],
                          tuple[Any, Rates]] = {}
        self._max = max_cached
        self.problem: str | None = None
        """Why the updated snapshot is not used (it did not load or price), or None."""
        self.broken: str | None = None
        """Why no snapshot at all could be loaded, or None."""
        renew_after_fork(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork

    # ------------------------------------------------------------------ snapshot
    def snapshot(self) -> DataSnapshot:
        snapshot = self._snapshot
        if snapshot is None:
            with self._lock:
                if self._snapshot is None:
                    self._snapshot = self._load()
                snapshot = self._snapshot
        return snapshot

    def _load(self) -> DataSnapshot:
        """The snapshot to price with; never raises. An updated snapshot that does not load
        or cannot price (truncated, hand-edited, written by another genai-prices version)
        gives way to the bundled one, with a warning; if even that fails, the snapshot is
        empty and :attr:`broken` says why (the price book then charges every model its
        fallback price, never $0)."""
        from genai_prices import data_snapshot

        if self.snapshot_file is not None:
            try:
                snapshot = self._read_file()
                check_snapshot(snapshot)
                return snapshot
            except Exception as exc:
                self.problem = f"{self.snapshot_file}: {_why(exc)}"
                self._meta = {}
                logger.warning(
                    "quota-hooks: the genai-prices snapshot %s cannot be used (%s); pricing "
                    "with the snapshot bundled with genai-prices instead. Fetch it again with "
                    "'quota-hooks prices --update', or remove the file.",
                    self.snapshot_file, _why(exc))
        try:
            snapshot = data_snapshot.get_snapshot()  # bundled (or one the app set in genai-prices)
            if not snapshot.providers:
                raise ValueError("it holds no providers")
            return snapshot
        except Exception as exc:
            self.broken = f"genai-prices' own snapshot: {_why(exc)}"
            logger.error(
                "quota-hooks: genai-prices' snapshot cannot be loaded (%s); every model "
                "without an override is charged the price book's fallback price.", _why(exc))
            return data_snapshot.DataSnapshot([], from_auto_update=False)

    def _read_file(self) -> DataSnapshot:
        from genai_prices import data_snapshot, types

        assert self.snapshot_file is not None
        raw = json.loads(self.snapshot_file.read_text("utf-8"))
        meta_file = self.snapshot_file.with_suffix(".meta.json")
        if not isinstance(raw, list):
            raise ValueError("not a genai-prices snapshot (a JSON list of providers)")
        providers = types._providers_from_raw(raw)
        meta = json.loads(meta_file.read_text("utf-8")) if meta_file.exists() else {}
        self._meta = meta if isinstance(meta, dict) else {}
        return data_snapshot.DataSnapshot(providers, from_auto_update=True)

    def info(self) -> SnapshotInfo:
        from genai_prices import __version__

        snapshot = self.snapshot()
        models = sum(len(p.models) for p in snapshot.providers)
        if self.snapshot_file is None or self.problem is not None:
            source, fetched, url = f"genai-prices {__version__} (bundled)", None, None
            if self.problem is not None:
                source += f"; the updated snapshot is not used: {self.problem}"
            if self.broken is not None:
                source = f"none: {self.broken}"
        else:
            source = str(self.snapshot_file)
            fetched, url = self._meta.get("fetched_at"), self._meta.get("url")
        return SnapshotInfo(source, __version__, fetched, url, len(snapshot.providers), models)

    @property
    def label(self) -> str:
        """The source of a price, on records (``price_source``)."""
        from genai_prices import __version__

        self.snapshot()
        updated = self.snapshot_file is not None and self.problem is None
        return f"genai-prices {__version__}" + (" (updated)" if updated else "")

    # ------------------------------------------------------------------ resolution
    def provider_id(self, provider: str | None) -> str | None:
        """genai-prices' id for a provider name as adapters see it (``"google_genai"``,
        ``"bedrock"``, ``"fireworks_ai"`` ...), or None when it names no known provider."""
        if provider is None or provider.strip().lower() in _ANONYMOUS:
            return None
        snapshot = self.snapshot()
        for candidate in (provider, provider.removesuffix("_ai")):
            try:
                return str(snapshot.find_provider(None, candidate, None).id)
            except LookupError:
                continue
        return None

    def provider_for_url(self, url: str) -> str | None:
        """genai-prices' id for a base URL (``https://api.groq.com/openai/v1`` is groq)."""
        try:
            return str(self.snapshot().find_provider(None, None, url).id)
        except LookupError:
            return None

    def model(self, model: str, provider: str | None) -> tuple[Any, Any, bool] | None:
        """``(provider info, model info, own)`` for a record's model and provider, or None.
        ``own`` is False for a model reached through a provider's fallback (Azure serving
        OpenAI's models): genai-prices applies no price context then."""
        key = (provider or "", model)
        try:
            return self._models[key]
        except KeyError:
            pass
        found = self._find(model, provider)
        if len(self._models) >= self._max:
            self._models.clear()
            _trim_lookups(self.snapshot(), self._max)
        self._models[key] = found
        return found

    def _find(self, model: str, provider: str | None) -> tuple[Any, Any, bool] | None:
        snapshot = self.snapshot()
        pid = self.provider_id(provider)
        name = model.strip()
        if pid is None and name.lower().startswith("ft:"):
            pid = "openai"  # an OpenAI fine-tune; genai-prices needs the provider for it
        bare = name.split("/", 1)[1] if "/" in name else None  # "openai/gpt-4o", "models/..."
        attempts = [(name, pid)] + ([(bare, pid)] if bare else [])
        # A provider that is known prices its own models (and those genai-prices says it
        # serves for another provider: Azure's OpenAI models); a model it does not list is
        # unpriced, never priced at another provider's (cheaper) price: hosts of the same
        # open-weight model charge very differently.
        # Without a provider the model's own name decides (genai-prices knows whose
        # "claude-*" or "gemini-*" is), and last OpenAI's catalogue: what an
        # OpenAI-compatible client most often calls ("text-embedding-3-small"). "openai" is
        # no better than none here: it is what a UsageRecord says by default, and what every
        # OpenAI-shaped client reports, so a model that OpenAI does not list goes by its name.
        if pid is None or pid == "openai":
            for fallback in (None, "openai"):
                if fallback != pid:
                    attempts += [(name, fallback)] + ([(bare, fallback)] if bare else [])
        for ref, provider_id in attempts:
            try:
                info, found = snapshot.find_provider_model(ref, None, provider_id, None)
            except LookupError:
                continue
            own = any(found is m for m in info.models)
            return info, found, own
        return None

    # ------------------------------------------------------------------ prices
    def current_prices(self) -> list[dict[str, Any]]:
        """Every model's standard price now, as the fields of an override price
        (:class:`~quota_hooks.pricing.ModelPrice`), the highest rate of a tiered price taken:
        for the dearest-price fallback."""
        from genai_prices.types import TieredPrices

        def top(value: Any) -> Any:
            if isinstance(value, TieredPrices):
                return max([value.base, *(tier.price for tier in value.tiers)])
            return value

        names = {"input_mtok": "input", "cache_read_mtok": "cached_input",
                 "cache_write_mtok": "cache_write", "output_mtok": "output",
                 "input_audio_mtok": "audio_input", "output_audio_mtok": "audio_output",
                 "input_mchars": "per_1m_characters"}
        now = datetime.now(UTC)
        prices = []
        for provider in self.snapshot().providers:
            for model in provider.models:
                price = model.get_prices(now)
                fields = {ours: top(getattr(price, theirs, None)) for theirs, ours in names.items()}
                hours = top(getattr(price, "audio_hours", None))
                if hours is not None:
                    fields["per_minute"] = hours / 60
                prices.append({k: v for k, v in fields.items() if v is not None})
        return prices

    def rates(self, found: tuple[Any, Any, bool], when: datetime,
              context: Mapping[str, str] | None) -> Rates:
        """The compiled price of a resolved model at ``when`` under ``context``."""
        info, model, own = found
        standard = model.get_prices(when)
        items: tuple[tuple[str, str], ...] = tuple(sorted(context.items())) if (
            context and own and model.price_variants) else ()
        # The price in force is ``standard`` (by identity), unless a variant applies, whose
        # own start dates go by day.
        # The provider is part of the key: a model reached through another provider's
        # fallback is priced (and named) as that provider's.
        key = (id(info), id(model), id(standard), items,
               when.date().isoformat() if items else "")
        hit = self._rates.get(key)
        if hit is not None and hit[0] is standard:
            return hit[1]
        price = model.get_prices(when, dict(items)) if items else standard
        rates = compile_price(price, f"{info.id}:{model.id}", self.label)
        if rates.per_second:
            minimum = _minimum_seconds(info, model, when, dict(items), rates.per_second)
            if minimum is not None:
                rates = compile_price(price, rates.key, rates.source, min_seconds=minimum)
        if len(self._rates) >= self._max:
            self._rates.clear()
        self._rates[key] = (standard, rates)  # holds ``standard``: its id stays its own
        return rates


#: genai-prices' own memo of lookups on a snapshot (private names of genai-prices 0.2; a
#: version without them is left alone): they keep every name ever looked up, unbounded.
_SNAPSHOT_MEMOS = ("_lookup_cache", "_provider_cache", "_provider_misses")


def _trim_lookups(snapshot: Any, most: int) -> None:
    """Empty genai-prices' lookup memos of ``snapshot`` that hold more than ``most`` names:
    model names come from request bodies, and a client that sends a new one on every call
    must not grow the process without bound."""
    for name in _SNAPSHOT_MEMOS:
        memo = getattr(snapshot, name, None)
        if memo is not None and hasattr(memo, "clear") and len(memo) > most:
            memo.clear()


def _minimum_seconds(info: Any, model: Any, when: datetime, context: dict[str, str],
                     per_second: Fraction) -> Fraction | None:
    """The least seconds of audio genai-prices bills a request of this model for (Groq's
    Whisper: 10 s), or None. It sits in ``ModelInfo.calc_price``, not in the price the rates
    are compiled from, so it is found by pricing one second there."""
    def cost(seconds: int) -> Fraction:
        found = model.calc_price({"audio_seconds": seconds}, info, genai_request_timestamp=when,
                                 price_context=context or None)
        return Fraction(found.total_price) * PICO_PER_USD

    try:
        one = cost(1)
        # genai-prices rounds to 28 digits: a floor shows as a whole ratio, give or take that.
        minimum = (one / per_second).limit_denominator(1000)
        if minimum <= 1 or abs(one - per_second * minimum) > per_second / 10**9:
            return None
        # A floor, not a different price: above it, each second costs one second.
        above = int(minimum) + 2
        if abs(cost(above) - per_second * above) > per_second / 10**9:
            return None
    except Exception:  # an odd price must not stop the pricing of everything else
        return None
    return minimum


def compile_price(price: Any, key: str, source: str, *,
                  min_seconds: Fraction | None = None) -> Rates:
    """Compile a genai-prices ``ModelPrice`` by pricing probe usages with it (see the module
    doc): a field's coefficient is what a million more of it adds, at each tier."""
    from genai_prices.types import TieredPrices

    starts = sorted({tier.start for value in vars(price).values()
                     if isinstance(value, TieredPrices) for tier in value.tiers})

    def cost(fields: Mapping[str, int]) -> Fraction:
        usage = {_USAGE_KEYS.get(name, name): count for name, count in fields.items()}
        return Fraction(price.calc_price(usage)["total_price"]) * PICO_PER_USD

    tables: list[tuple[tuple[str, int | Fraction], ...]] = []
    constants: list[int | Fraction] = []
    for level in range(len(starts) + 1):
        floor = 0 if level == 0 else starts[level - 1] + 1  # the least input of this tier
        # Probes stay inside the tier: input at most its threshold (a request is priced at
        # the tier its whole input reaches).
        size = _M if level == len(starts) else max(1, min(_M, starts[level] - floor))
        base = cost({"input_tokens": floor})
        per_input = (cost({"input_tokens": floor + size}) - base) / size
        coefficients: list[tuple[str, int | Fraction]] = []
        for name in _USAGE_KEYS:
            if name == "input_tokens":
                per = per_input
            elif name in _PARTS:  # inside its parent, on top of the tier's least input
                parent = {k: floor + size if k == "input_tokens" else size
                          for k in _PARTS[name]}
                per = (cost({**parent, name: size}) - cost(parent)) / size
            else:  # output tokens, characters
                per = (cost({"input_tokens": floor, name: _M}) - base) / _M
            if per:
                coefficients.append((name, exact(per)))
        tables.append(tuple(coefficients))
        constants.append(exact(base - per_input * floor))  # per request (rare)
    priced = frozenset(name for name, keys in _PRICED_BY.items()
                       if any(getattr(price, k, None) is not None for k in keys))
    per_second = cost({"audio_seconds": 3600}) / 3600 if "audio_seconds" in priced else None
    return Rates(key=key, source=source, starts=tuple(starts), tables=tuple(tables),
                 constants=tuple(constants), priced=priced, per_second=per_second,
                 min_seconds=min_seconds)
