"""The price book: genai-prices for every provider, exact to the nano-dollar, overrides on
top, compiled rates that equal ``genai_prices.calc_price`` case by case."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage, calc_price

from quota_hooks import ConfigurationError, PriceBook, UsageRecord, estimate_cost
from quota_hooks.pricing import from_nanos, to_nanos

pytestmark = pytest.mark.unit

BOOK = PriceBook.bundled()
T = datetime(2026, 11, 15, 12, tzinfo=UTC)  # after the 2026-10 tier prices start
NIGHT = datetime(2026, 11, 15, 20, tzinfo=UTC)
# Our record fields -> genai-prices usage keys.
KEYS = {"input_tokens": "input_tokens", "cached_input_tokens": "cache_read_tokens",
        "cache_write_tokens": "cache_write_tokens",
        "cache_write_1h_tokens": "cache_write_1h_tokens",
        "audio_input_tokens": "input_audio_tokens", "output_tokens": "output_tokens",
        "reasoning_tokens": "output_reasoning_tokens",
        "audio_output_tokens": "output_audio_tokens", "characters": "input_characters",
        "audio_seconds": "audio_seconds"}


def io(inputs: int, outputs: int, **parts: Any) -> dict[str, Any]:
    return {"input_tokens": inputs, "output_tokens": outputs, **parts}


# (provider as an adapter reports it, model, record usage, context, when)
CASES: list[tuple[str, str, dict[str, Any], dict[str, str] | None, datetime]] = [
    ("openai", "gpt-4o", io(1_000, 500), None, T),
    ("openai", "gpt-4o", io(10_000, 1_000, cached_input_tokens=4_000), None, T),
    ("openai", "gpt-4o-mini", io(1_000_000, 1_000_000), None, T),
    ("openai", "gpt-4.1", io(5_000, 2_000), None, T),
    ("openai", "gpt-4.1-mini", io(12_345, 678, cached_input_tokens=10_000), None, T),
    ("openai", "o3", io(2_000, 8_000, reasoning_tokens=7_000), None, T),
    ("openai", "o4-mini", io(3_000, 6_000), None, T),
    ("openai", "gpt-4o-2024-08-06", io(1_000, 500), None, T),  # a dated snapshot name
    ("openai", "o3", io(2_000, 8_000), {"service_tier": "flex"}, T),
    ("openai", "o3", io(2_000, 8_000), {"service_tier": "priority"}, T),
    ("openai", "o3", io(2_000, 8_000), {"processing": "batch"}, T),
    ("openai", "o3", io(2_000, 8_000), None, datetime(2025, 5, 1, tzinfo=UTC)),
    ("openai", "gpt-5.4", io(300_000, 1_000), None, T),  # above its 272k tier
    ("openai", "gpt-5.4", io(272_000, 1_000), None, T),
    ("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123", io(1_000, 500), None, T),
    ("openai", "text-embedding-3-small", io(1_000_000, 0), None, T),
    ("openai", "whisper-1", {"audio_seconds": 90.5}, None, T),
    ("openai", "tts-1", {"characters": 1_234}, None, T),
    ("anthropic", "claude-sonnet-4-20250514",
     io(10_000, 1_000, cached_input_tokens=2_000, cache_write_tokens=3_000), None, T),
    ("anthropic", "claude-sonnet-4-20250514",
     io(10_000, 1_000, cached_input_tokens=2_000, cache_write_tokens=3_000,
        cache_write_1h_tokens=1_000), None, T),
    ("anthropic", "claude-3-5-haiku-20241022",
     io(10_000, 1_000, cached_input_tokens=2_000, cache_write_tokens=3_000), None, T),
    ("anthropic", "claude-haiku-4-5", io(10_000, 1_000), {"processing": "batch"}, T),
    ("google_genai", "gemini-2.5-pro", io(100_000, 2_000), None, T),
    ("google_genai", "gemini-2.5-pro", io(200_000, 2_000), None, T),  # the tier's edge
    ("google_genai", "gemini-2.5-pro", io(200_001, 2_000), None, T),  # the whole request
    ("vertex_ai", "gemini-2.5-pro", io(250_000, 2_000), {"processing": "batch"}, T),
    ("gemini", "gemini-2.5-flash", io(10_000, 1_000, audio_input_tokens=3_000), None, T),
    ("mistralai", "mistral-large-latest", io(10_000, 1_000), None, T),
    ("mistral", "mistral-large-latest", io(20_000, 3_000), None, T),
    ("deepseek", "deepseek-chat", io(10_000, 1_000), None, T),
    ("deepseek", "deepseek-chat", io(10_000, 1_000), None, NIGHT),  # its off-peak price
    ("groq", "llama-3.3-70b-versatile", io(10_000, 1_000), None, T),
    ("bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0",
     io(10_000, 1_000, cached_input_tokens=2_000), None, T),
    ("azure", "gpt-4o", io(1_000, 500), None, T),
    ("xai", "grok-3", io(10_000, 1_000), None, T),
    ("together_ai", "meta-llama/Llama-3.3-70B-Instruct-Turbo", io(10_000, 1_000), None, T),
    ("openrouter", "openai/gpt-4o", io(1_000, 500), None, T),
    ("fireworks_ai", "accounts/fireworks/models/deepseek-v3p2", io(10_000, 1_000), None, T),
]


def genai_provider(provider: str) -> str:
    """The provider id genai-prices is asked under, for the reference price."""
    return {"google_genai": "google", "vertex_ai": "google", "gemini": "google",
            "mistralai": "mistral", "bedrock": "aws", "xai": "x-ai",
            "together_ai": "together", "fireworks_ai": "fireworks"}.get(provider, provider)


@pytest.mark.parametrize(("provider", "model", "usage", "context", "when"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_equal_to_genai_prices(provider: str, model: str, usage: dict[str, Any],
                               context: dict[str, str] | None, when: datetime) -> None:
    record = UsageRecord(model=model, provider=provider, timestamp=when,
                         service_tier=(context or {}).get("service_tier"),
                         batch=(context or {}).get("processing") == "batch", **usage)
    reference = calc_price(Usage(**{KEYS[k]: v for k, v in usage.items()}), model,
                           provider_id=genai_provider(provider), genai_request_timestamp=when,
                           price_context=context).total_price
    got = BOOK.cost(record)
    assert got.usd is not None, got
    assert abs(got.usd - reference) <= Decimal("1e-9"), (got, reference)
    assert got.usd == reference  # exact, in fact
    assert got.source.startswith("genai-prices")


def test_the_table_covers_what_the_issue_asks() -> None:
    providers = {genai_provider(c[0]) for c in CASES}
    assert {"openai", "anthropic", "google", "mistral", "deepseek", "groq", "aws",
            "azure"} <= providers
    assert len(CASES) >= 30


def test_tiers_reprice_the_whole_request() -> None:
    below = BOOK.cost(UsageRecord(model="gemini-2.5-pro", provider="google",
                                  timestamp=T, **io(200_000, 2_000)))
    above = BOOK.cost(UsageRecord(model="gemini-2.5-pro", provider="google",
                                  timestamp=T, **io(200_001, 2_000)))
    assert below.usd is not None and above.usd is not None
    assert above.usd > Decimal("1.9") * below.usd  # every token at the higher rate, output too


def test_the_served_service_tier_is_billed() -> None:
    def priced(tier: str | None) -> Decimal:
        usd = BOOK.cost(UsageRecord(model="o3", provider="openai", timestamp=T,
                                    service_tier=tier, **io(2_000, 8_000))).usd
        assert usd is not None
        return usd

    assert priced("flex") * 2 == priced(None) == priced("default")
    assert priced("priority") > priced(None) * Decimal("1.7")


def test_compiled_rates_equal_calc_price_on_random_usage() -> None:
    rng = random.Random(11)
    for provider, model, context in [("openai", "gpt-4o", None),
                                     ("openai", "o3", {"service_tier": "priority"}),
                                     ("anthropic", "claude-sonnet-4-20250514", None),
                                     ("google", "gemini-2.5-pro", None),
                                     ("google", "gemini-2.5-pro", {"processing": "batch"})]:
        for _ in range(300):
            inputs = rng.randint(0, 400_000)
            cached = rng.randint(0, inputs)
            written = rng.randint(0, inputs - cached)
            hour = rng.randint(0, written)
            outputs = rng.randint(0, 50_000)
            usage = io(inputs, outputs, cached_input_tokens=cached, cache_write_tokens=written,
                       cache_write_1h_tokens=hour)
            record = UsageRecord(model=model, provider=provider, timestamp=T,
                                 service_tier=(context or {}).get("service_tier"),
                                 batch=bool(context and "processing" in context), **usage)
            reference = calc_price(Usage(**{KEYS[k]: v for k, v in usage.items()}), model,
                                   provider_id=provider, genai_request_timestamp=T,
                                   price_context=context).total_price
            assert BOOK.cost(record).usd == reference, (model, usage)


def test_the_same_name_at_another_provider_costs_what_that_provider_charges() -> None:
    at_openai = BOOK.cost(UsageRecord(model="openai/gpt-4o", provider="openrouter",
                                      timestamp=T, **io(1_000, 500)))
    claude = BOOK.cost(UsageRecord(model="claude-sonnet-4-20250514", provider="bedrock",
                                   timestamp=T, **io(1_000, 500)))
    assert at_openai.model == "openrouter:openai/gpt-4o"
    assert claude.model is not None and claude.model.startswith("aws:")


def test_reasoning_tokens_are_priced_as_output_not_twice() -> None:
    with_reasoning = BOOK.cost(UsageRecord(model="o4-mini", timestamp=T, input_tokens=100,
                                           output_tokens=1_000, reasoning_tokens=800))
    without = BOOK.cost(UsageRecord(model="o4-mini", timestamp=T, input_tokens=100,
                                    output_tokens=1_000))
    assert with_reasoning.usd == without.usd is not None


def test_overrides_win_and_image_prices_ship_as_an_example() -> None:
    assert BOOK.cost(UsageRecord(model="dall-e-3", api_method="images.generate", images=2,
                                 image_size="1024x1792", image_quality="hd")).usd == Decimal(
        "0.240")
    assert BOOK.cost(UsageRecord(model="dall-e-3", images=1)).usd == Decimal("0.040")
    # An image model billed by tokens reports the images too: priced by its tokens.
    image = BOOK.cost(UsageRecord(model="gpt-image-1", timestamp=T, input_tokens=50,
                                  output_tokens=4_160, images=1))
    assert image.usd == calc_price(Usage(input_tokens=50, output_tokens=4_160), "gpt-image-1",
                                   provider_id="openai", genai_request_timestamp=T).total_price


def test_unknown_model_is_unpriced_never_zero_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    book = PriceBook.bundled()
    with caplog.at_level(logging.WARNING, logger="quota_hooks"):
        first = book.cost(UsageRecord(model="my-local-llama", input_tokens=10))
        second = book.cost(UsageRecord(model="my-local-llama", input_tokens=10))
    assert first.usd is None and not first.priced and first.source == "unpriced"
    assert second.usd is None
    assert len([r for r in caplog.records if "my-local-llama" in r.getMessage()]) == 1


def test_no_usage_costs_zero_even_for_unknown_models() -> None:
    assert BOOK.cost(UsageRecord(model="whatever", api_method="models")).usd == 0


def test_overrides_from_dict_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    book = BOOK.with_overrides({"my-llm": {"input": "1.00", "output": "2.00"}})
    result = book.cost(UsageRecord(model="my-llm", input_tokens=1_000_000, output_tokens=1_000_000))
    assert result.usd == Decimal("3.00") and result.source == "override"
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {"gpt-4o": {"input": "1", "output": "1"}}}))
    monkeypatch.setenv("QUOTA_HOOKS_PRICES_FILE", str(path))
    default = PriceBook.default()
    assert default.cost(UsageRecord(model="gpt-4o", input_tokens=1_000_000)).usd == Decimal("1")
    assert default.cost(UsageRecord(model="gpt-4o-mini", timestamp=T,
                                    input_tokens=1_000_000)).usd == Decimal("0.15")


@pytest.mark.parametrize(
    ("name", "key"),
    [("gpt-4o-2024-08-06", "gpt-4o"), ("openai/gpt-4o-mini", "gpt-4o-mini"),
     ("azure/gpt-4.1-2025-04-14", "gpt-4.1"), ("GPT-4O", "gpt-4o"), ("gpt-4-0613", "gpt-4"),
     ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini"),
     ("ft:gpt-4-turbo:acme::x", "ft:gpt-4-turbo(base prices)")],
)
def test_override_name_resolution(name: str, key: str) -> None:
    book = PriceBook({"gpt-4o": {"input": "1"}, "gpt-4o-mini": {"input": "1", "fine_tuned": {
        "input": "2"}}, "gpt-4.1": {"input": "1"}, "gpt-4": {"input": "1"},
        "gpt-4-turbo": {"input": "1"}})
    found = book.resolve(name)
    assert found is not None and found[0] == key


def test_bad_price_file_names_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {"gpt-4o": {"input": "-1"}}}))
    with pytest.raises(ConfigurationError, match=r"gpt-4o.*input.*-1"):
        PriceBook.from_file(path)
    monkeypatch.setenv("QUOTA_HOOKS_PRICES_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigurationError, match="QUOTA_HOOKS_PRICES_FILE"):
        PriceBook.default()
    with pytest.raises(ConfigurationError, match="inptu"):
        PriceBook({"x": {"inptu": "1"}})


def test_seed_estimate_cost() -> None:
    assert estimate_cost("gpt-4o-mini", 1_000_000) == Decimal("0.15")
    assert estimate_cost("gpt-4o-mini", 1_000, 1_000) == Decimal("0.00075")
    assert estimate_cost("nope", 10) is None


def test_nanos_round_trip_is_exact() -> None:
    assert to_nanos(Decimal("0.000000075")) == 75
    assert from_nanos(to_nanos(Decimal("12.345678901"))) == Decimal("12.345678901")


@pytest.mark.slow
def test_from_litellm_matches_litellm_map() -> None:
    import litellm
    book = PriceBook.from_litellm()
    entry = litellm.model_cost["gpt-4o-mini"]
    got = book.cost(UsageRecord(model="gpt-4o-mini", input_tokens=1_000, output_tokens=1_000)).usd
    expected = (
        Decimal(repr(entry["input_cost_per_token"])) * 1_000
        + Decimal(repr(entry["output_cost_per_token"])) * 1_000
    )
    assert got == expected
    assert book.source == "litellm"


def test_estimate_nanos_equals_the_exact_path() -> None:
    book = PriceBook.default()
    for model in ["gpt-4o", "gpt-4o-mini", "o3", "claude-sonnet-4-20250514", "gemini-2.5-pro",
                  "text-embedding-3-small", "dall-e-3"]:
        for tokens in ((0, 0), (1, 0), (0, 1), (1234, 567), (10**9, 3), (250_000, 10)):
            exact = book.estimate_cost(model, *tokens)
            expected = 0 if exact is None else to_nanos(exact)
            assert book.estimate_nanos(model, *tokens) == expected, (model, tokens)
    assert book.estimate_nanos("no-such-model", 100, 100) is None  # unknown, never free
    odd = book.with_overrides({"odd": {"input": "0.0000001", "output": "1"}})
    assert odd.estimate_nanos("odd", 5, 0) == to_nanos(odd.estimate_cost("odd", 5, 0) or 0)


def test_the_caches_are_bounded() -> None:
    book = PriceBook.bundled()
    for i in range(5_000):
        book.cost(UsageRecord(model=f"nobody-{i}", provider="groq", input_tokens=1))
    assert book.genai is not None
    assert len(book.genai._models) <= 4096 and len(book._table_rates) <= 4096
    # genai-prices' own memos of lookups are trimmed with ours.
    snapshot = book.genai.snapshot()
    assert all(len(getattr(snapshot, name)) <= 4096 for name in
               ("_lookup_cache", "_provider_cache", "_provider_misses"))


def test_a_huge_model_name_is_never_kept_whole() -> None:
    """A model name is whatever a request body says: a 1 MB one is bounded before any cache
    sees it, and still prices nothing (its bounded form matches no model)."""
    book = PriceBook.bundled()
    for i in range(20):
        huge = "gpt-4o" + "x" * 1_000_000 + str(i)
        assert book.estimate_nanos(huge, 10, 10) is None
        assert book.rates(huge, "p" * 10_000) is None
    assert book.genai is not None
    cached = [*book._table_rates, *book._resolved, *(m for _, m in book.genai._models)]
    assert cached and max(map(len, cached)) <= 200
