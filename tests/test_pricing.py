from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from quota_hooks import ConfigurationError, PriceBook, UsageRecord, estimate_cost
from quota_hooks.pricing import from_nanos, to_nanos

BOOK = PriceBook.bundled()


def cost(**kw: object) -> Decimal | None:
    return BOOK.cost(UsageRecord(**kw)).usd  # type: ignore[arg-type]


def test_bundled_table_has_a_date_and_source() -> None:
    assert BOOK.as_of and BOOK.source.startswith("bundled:")
    for model in [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
        "dall-e-3",
        "gpt-image-1",
        "whisper-1",
        "tts-1",
    ]:
        assert BOOK.price(model) is not None, model


def test_plain_input_and_output() -> None:
    # gpt-4o: $2.50 in, $10.00 out per 1M
    assert cost(model="gpt-4o", input_tokens=1_000, output_tokens=500) == Decimal("0.0075")


def test_cached_tokens_are_cheaper_and_part_of_input() -> None:
    # gpt-4o-mini: 0.15 in, 0.075 cached, 0.60 out
    got = cost(model="gpt-4o-mini", input_tokens=1_000, cached_input_tokens=400, output_tokens=200)
    assert got == Decimal(600 * 15 + 400 * 7.5 + 200 * 60) / Decimal(100_000_000)
    assert got == Decimal("0.00024")


def test_reasoning_tokens_are_priced_as_output_not_twice() -> None:
    with_reasoning = cost(
        model="o4-mini", input_tokens=100, output_tokens=1_000, reasoning_tokens=800
    )
    without = cost(model="o4-mini", input_tokens=100, output_tokens=1_000)
    assert with_reasoning == without == Decimal("0.00451")


def test_cache_write_price_where_it_exists() -> None:
    got = cost(model="claude-sonnet-4-5", input_tokens=1_000, cache_write_tokens=1_000)
    assert got == Decimal("0.00375")


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("azure/gpt-4.1-2025-04-14", "gpt-4.1"),
        ("GPT-4O", "gpt-4o"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4-1106-preview", "gpt-4-turbo"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini"),
        ("ft:gpt-4-turbo:acme::x", "ft:gpt-4-turbo(base prices)"),
    ],
)
def test_name_resolution(name: str, key: str) -> None:
    found = BOOK.resolve(name)
    assert found is not None and found[0] == key


def test_fine_tune_prices() -> None:
    assert cost(model="ft:gpt-4o-mini-2024-07-18:acme::abc", input_tokens=1_000_000) == Decimal(
        "0.30"
    )


def test_units() -> None:
    assert cost(
        model="dall-e-3",
        api_method="images.generate",
        images=2,
        image_size="1024x1792",
        image_quality="hd",
    ) == Decimal("0.240")
    assert cost(model="dall-e-3", images=1) == Decimal("0.040")
    assert cost(model="whisper-1", audio_seconds=90.0) == Decimal("0.009")
    assert cost(model="tts-1", characters=1_000) == Decimal("0.015")
    assert cost(model="gpt-image-1", input_tokens=50, output_tokens=4_160, images=1) == Decimal(
        "0.16665"
    )


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
    assert default.cost(UsageRecord(model="gpt-4o-mini", input_tokens=1_000_000)).usd == Decimal(
        "0.15"
    )


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
    for model in book.models():
        for tokens in ((0, 0), (1, 0), (0, 1), (1234, 567), (10**9, 3)):
            exact = book.estimate_cost(model, *tokens)
            expected = 0 if exact is None else to_nanos(exact)
            assert book.estimate_nanos(model, *tokens) == expected, (model, tokens)
    assert book.estimate_nanos("no-such-model", 100, 100) is None  # unknown, never free
    odd = book.with_overrides({"odd": {"input": "0.0000001", "output": "1"}})
    assert odd.estimate_nanos("odd", 5, 0) == to_nanos(odd.estimate_cost("odd", 5, 0) or 0)
