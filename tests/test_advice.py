"""Cheaper-model advice: a real token mix repriced on comparable models, checked against
prices worked out by hand from genai-prices' bundled snapshot (genai-prices 0.2.3)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from quota_hooks import UsageRecord
from quota_hooks.advice import (
    NO_QUALITY_CLAIM,
    TokenMix,
    advise,
    billed_units,
    format_advice,
    mixes_from_breakdown,
    mixes_from_records,
)
from quota_hooks.pricing import PriceBook
from quota_hooks.storage.base import OTHER, Aggregate

pytestmark = pytest.mark.unit

BOOK = PriceBook.bundled()
W = datetime(2026, 12, 1, 12, tzinfo=UTC)
D = Decimal
# USD per 1M tokens, read out of genai-prices 0.2.3's bundled snapshot (genai_prices/data.py):
#   openai:gpt-4o             input 2.5   cache_read 1.25   output 10
#   openai:gpt-4o-mini        input 0.15  cache_read 0.075  output 0.6
#   openai:o3                 input 2     cache_read 0.5    output 8
#   openai:o4-mini            input 1.1   cache_read 0.275  output 4.4
#   anthropic:claude-sonnet-4-6  input 3  cache_write 3.75  cache_read 0.3  output 15
#   anthropic:claude-haiku-4-5   input 1  cache_write 1.25  cache_read 0.1  output 5
#   anthropic:claude-haiku-5-5   tiered at 100,000 input tokens: input 0.1 / 0.5,
#                                output 0.5 / 2.5 (context window 1M)
#   openai:gpt-3.5-turbo      input 0.5   output 1.5   context window 16,385
# Cached and cache-write tokens are part of the input; reasoning tokens part of the output
# (billed at the output price: none of these has a reasoning price).

# 100 requests, 1M input tokens of which 200k cached, 50k output.
CHAT = TokenMix(requests=100, input_tokens=1_000_000, cached_input_tokens=200_000,
                output_tokens=50_000)
# gpt-4o: 800k x 2.5 + 200k x 1.25 + 50k x 10 (per 1M) = 2.00 + 0.25 + 0.50
GPT_4O = D("2.75")
# gpt-4o-mini: 800k x 0.15 + 200k x 0.075 + 50k x 0.6 = 0.12 + 0.015 + 0.03
GPT_4O_MINI = D("0.165")


def test_chat_mix_with_cached_tokens_matches_hand_prices() -> None:
    advice = advise({"gpt-4o": CHAT}, BOOK, provider="openai", when=W)
    [item] = advice.models
    assert item.cost_usd == GPT_4O
    assert item.priced_as == "openai:gpt-4o" and item.provider == "openai"
    mini = {a.model: a for a in item.alternatives}["gpt-4o-mini"]
    assert mini.cost_usd == GPT_4O_MINI
    assert mini.saving_usd == D("2.585") == GPT_4O - GPT_4O_MINI
    assert mini.saving_percent == D("94.0")  # 2.585 / 2.75 = 94.0 %
    assert mini.priced_as == "openai:gpt-4o-mini"
    # cheapest first, and every one cheaper than the model used
    costs = [a.cost_usd for a in item.alternatives]
    assert costs == sorted(costs) and all(c < GPT_4O for c in costs)
    assert item.cheapest is item.alternatives[0]
    assert advice.cost_usd == GPT_4O
    assert advice.best_saving_usd == item.alternatives[0].saving_usd


def test_cached_tokens_change_the_price() -> None:
    plain = TokenMix(requests=100, input_tokens=1_000_000, output_tokens=50_000)
    item = advise({"gpt-4o": plain}, BOOK, provider="openai", when=W).models[0]
    assert item.cost_usd == D("3")  # 1M x 2.5 + 50k x 10
    assert {a.model: a for a in item.alternatives}["gpt-4o-mini"].cost_usd == D("0.18")


def test_reasoning_tokens_are_priced_as_output() -> None:
    # 10 requests, 400k input (100k cached), 60k output of which 40k reasoning.
    mix = TokenMix(requests=10, input_tokens=400_000, cached_input_tokens=100_000,
                   output_tokens=60_000, reasoning_tokens=40_000)
    item = advise({"o3": mix}, BOOK, provider="openai", when=W).models[0]
    # o3: 300k x 2 + 100k x 0.5 + 60k x 8 = 0.6 + 0.05 + 0.48
    assert item.cost_usd == D("1.13")
    # o4-mini: 300k x 1.1 + 100k x 0.275 + 60k x 4.4 = 0.33 + 0.0275 + 0.264
    o4 = {a.model: a for a in item.alternatives}["o4-mini"]
    assert o4.cost_usd == D("0.6215")
    assert o4.saving_usd == D("0.5085")
    assert o4.saving_percent == D("45.0")  # 0.5085 / 1.13 = 45.0 %
    assert "reasoning tokens are repriced as they are" in format_advice(
        advise({"o3": mix}, BOOK, provider="openai", when=W))


@pytest.mark.parametrize("provider", ["anthropic", None])
def test_cache_writes_and_tiers(provider: str | None) -> None:
    # 10 requests, 500k input: 100k cache reads, 50k cache writes; 20k output (5k reasoning).
    mix = TokenMix(requests=10, input_tokens=500_000, cached_input_tokens=100_000,
                   cache_write_tokens=50_000, output_tokens=20_000, reasoning_tokens=5_000)
    item = advise({"claude-sonnet-4-6": mix}, BOOK, provider=provider, when=W).models[0]
    # sonnet-4-6: 350k x 3 + 100k x 0.3 + 50k x 3.75 + 20k x 15 = 1.05 + 0.03 + 0.1875 + 0.3
    assert item.cost_usd == D("1.5675")
    assert item.provider == "anthropic"
    alternatives = {a.model: a for a in item.alternatives}
    # haiku-4-5: 350k x 1 + 100k x 0.1 + 50k x 1.25 + 20k x 5 = 0.35 + 0.01 + 0.0625 + 0.1
    assert alternatives["claude-haiku-4-5"].cost_usd == D("0.5225")
    assert alternatives["claude-haiku-4-5"].saving_usd == D("1.045")
    # haiku-5-5, the average request (50k input) under its 100k tier:
    # 350k x 0.1 + 100k x 0.01 + 50k x 0.125 + 20k x 0.5 = 0.035 + 0.001 + 0.00625 + 0.01
    assert alternatives["claude-haiku-5-5"].cost_usd == D("0.05225")
    # two requests of 150k input on average: haiku-5-5's upper tier, 300k x 0.5 + 10k x 2.5
    big = TokenMix(requests=2, input_tokens=300_000, output_tokens=10_000)
    item = advise({"claude-sonnet-4-6": big}, BOOK, provider=provider, when=W).models[0]
    assert item.cost_usd == D("1.05")  # 300k x 3 + 10k x 15
    tiered = {a.model: a for a in item.alternatives}["claude-haiku-5-5"]
    assert tiered.cost_usd == D("0.175")
    # haiku-4-5 (context window 200k) still takes a 150k request
    assert "claude-haiku-4-5" in {a.model for a in item.alternatives}


def test_candidates_are_the_same_provider_and_units() -> None:
    advice = advise({"gpt-4o": CHAT, "gpt-realtime": TokenMix(3, 3000, 0, 0, 300, 0),
                     "claude-sonnet-4-6": TokenMix(1, 1000, 0, 0, 100, 0)},
                    BOOK, when=W, cheaper_only=False)
    assert advice.unpriced == ()
    snapshot = BOOK.genai.snapshot()  # type: ignore[union-attr]
    for item in advice.models:
        info = snapshot.find_provider(None, item.provider, None)
        own = {str(m.id): m for m in info.models}
        assert item.alternatives
        for alternative in item.alternatives:
            assert alternative.priced_as == f"{item.provider}:{alternative.model}"
            model = own[alternative.model]
            assert billed_units(model.get_prices(W)) == item.billed_for
            assert not model.deprecated and not alternative.model.startswith("ft:")
            assert alternative.model != item.model
    chat = {a.model for a in next(m for m in advice.models if m.model == "gpt-4o").alternatives}
    assert {"gpt-4o-mini", "gpt-4.1-nano", "o3"} <= chat
    for other in ("text-embedding-3-small", "tts-1", "whisper-1", "gpt-realtime",
                  "gpt-image-1", "ft:gpt-4o-mini", "gpt-4o-mini-2024-07-18.ft-",
                  "claude-haiku-4-5", "moderation"):
        assert other not in chat
    realtime = next(m for m in advice.models if m.model == "gpt-realtime")
    assert realtime.billed_for == {"input tokens", "output tokens", "audio input",
                                   "audio output", "image input"}
    assert "gpt-realtime-mini" in {a.model for a in realtime.alternatives}
    assert "gpt-4o-mini" not in {a.model for a in realtime.alternatives}
    claude = next(m for m in advice.models if m.model == "claude-sonnet-4-6")
    assert all(a.priced_as.startswith("anthropic:") for a in claude.alternatives)
    # cheaper_only=False lists the dearer ones too, with a negative saving
    assert any(a.saving_usd < 0 for a in claude.alternatives)


def test_embeddings_compare_with_embeddings() -> None:
    item = advise({"text-embedding-3-large": TokenMix(3, 3000, 0, 0, 0, 0)}, BOOK,
                  provider="openai", when=W).models[0]
    # 3000 x 0.13 / 1M = 0.00039; 3-small 3000 x 0.02 = 0.00006; ada-002 3000 x 0.1 = 0.0003
    assert item.cost_usd == D("0.00039")
    assert [(a.model, a.cost_usd) for a in item.alternatives] == [
        ("text-embedding-3-small", D("0.00006")), ("text-embedding-ada-002", D("0.0003"))]


def test_your_capability_labels_narrow_the_candidates() -> None:
    labels = {"gpt-4o": {"chat", "vision"}, "gpt-4o-mini": {"chat", "vision", "audio"},
              "gpt-3.5-turbo": {"chat"}, "gpt-4.1-nano": {"vision"}}
    item = advise({"gpt-4o": CHAT}, BOOK, provider="openai", when=W,
                  capabilities=labels).models[0]
    assert [(a.model, a.cost_usd) for a in item.alternatives] == [("gpt-4o-mini", GPT_4O_MINI)]


def test_context_window_smaller_than_the_average_request() -> None:
    small = TokenMix(requests=10, input_tokens=10_000, output_tokens=1_000)
    large = TokenMix(requests=10, input_tokens=200_000, output_tokens=1_000)  # 20k a request
    def names(mix: TokenMix) -> set[str]:
        item = advise({"gpt-4o": mix}, BOOK, provider="openai", when=W).models[0]
        return {a.model for a in item.alternatives}
    assert "gpt-3.5-turbo" in names(small)  # context window 16,385
    assert "gpt-3.5-turbo" not in names(large)
    assert "gpt-4o-mini" in names(large)


def test_overrides_win_for_the_model_used_and_the_candidates() -> None:
    book = BOOK.with_overrides({"gpt-4o-mini": {"input": "0.1", "output": "0.4"}})
    item = advise({"gpt-4o": CHAT}, book, provider="openai", when=W).models[0]
    assert item.cost_usd == GPT_4O
    mini = {a.model: a for a in item.alternatives}["gpt-4o-mini"]
    # no cached price in the override: cached input at the input price, 1M x 0.1 + 50k x 0.4
    assert mini.cost_usd == D("0.12")
    assert mini.priced_as == "gpt-4o-mini"


def test_unpriced_models_are_never_free() -> None:
    mixes = {"my-own-llm": TokenMix(5, 1000, 0, 0, 100, 0), OTHER: TokenMix(2, 10, 0, 0, 1, 0),
             "gpt-4o": CHAT}
    advice = advise(mixes, BOOK, provider="openai", when=W)
    assert set(advice.unpriced) == {"my-own-llm", OTHER}
    assert advice.models[0].model == "gpt-4o"  # priced first, the unpriced last
    for item in advice.models[1:]:
        assert item.cost_usd is None and not item.priced and item.alternatives == ()
        assert item.note is not None and item.note.startswith("unpriced")
    assert advice.cost_usd == GPT_4O  # the unpriced counted as unknown, not as $0
    data = json.loads(json.dumps(advice.to_dict()))
    assert [m["cost_usd"] for m in data["models"]][1:] == [None, None]
    assert data["unpriced"] == list(advice.unpriced)
    text = format_advice(advice)
    assert "my-own-llm" in text and "cost: unknown" in text and "not $0" in text
    assert "2 unpriced model(s)" in text


def test_an_override_only_book_has_no_candidates() -> None:
    book = PriceBook({"house-llm": {"input": "1", "output": "2"}})
    item = advise({"house-llm": TokenMix(1, 1_000_000, 0, 0, 500_000, 0)}, book,
                  when=W).models[0]
    assert item.cost_usd == D("2")  # 1M x 1 + 500k x 2
    assert item.alternatives == () and item.note is not None


def test_empty() -> None:
    advice = advise({}, BOOK, when=W)
    assert advice.models == () and advice.cost_usd == 0 and advice.best_saving_usd == 0
    assert "nothing to reprice" in format_advice(advice)
    assert NO_QUALITY_CLAIM in format_advice(advice)
    nothing = advise({"gpt-4o": TokenMix()}, BOOK, provider="openai", when=W).models[0]
    assert nothing.cost_usd == 0 and nothing.alternatives == () and nothing.cheapest is None
    every = advise({"gpt-4o": TokenMix()}, BOOK, provider="openai", when=W,
                   cheaper_only=False).models[0]
    assert every.alternatives
    assert all(a.cost_usd == 0 and a.saving_percent is None for a in every.alternatives)


def test_token_mix_rules() -> None:
    with pytest.raises(ValueError, match="part of input"):
        TokenMix(1, 10, cached_input_tokens=8, cache_write_tokens=3)
    with pytest.raises(ValueError, match="part of output"):
        TokenMix(1, 10, output_tokens=1, reasoning_tokens=2)
    with pytest.raises(ValueError, match=">= 0"):
        TokenMix(-1)
    with pytest.raises(ValueError, match="whole number"):
        TokenMix(1, 1.5)  # type: ignore[arg-type]
    assert TokenMix(1, 10, 2, 1, 5, 3) + TokenMix(2, 5, 1, 0, 1, 0) == TokenMix(3, 15, 3, 1,
                                                                                 6, 3)


def test_mixes_from_breakdown_and_records() -> None:
    rows = {"gpt-4o": Aggregate(requests=3, errors=1, tokens=1100, input_tokens=1000,
                                output_tokens=100, cost_nanos=123, cached_input_tokens=400,
                                cache_write_tokens=50, reasoning_tokens=20)}
    assert mixes_from_breakdown(rows) == {"gpt-4o": TokenMix(3, 1000, 400, 50, 100, 20)}
    records = [UsageRecord(model="gpt-4o", input_tokens=100, cached_input_tokens=40,
                           output_tokens=30, reasoning_tokens=10),
               UsageRecord(model="gpt-4o", input_tokens=50, output_tokens=5),
               UsageRecord(model="o3", input_tokens=7, output_tokens=1)]
    assert mixes_from_records(records) == {"gpt-4o": TokenMix(2, 150, 40, 0, 35, 10),
                                           "o3": TokenMix(1, 7, 0, 0, 1, 0)}


def test_to_dict_and_format() -> None:
    advice = advise({"gpt-4o": CHAT}, BOOK, provider="openai", when=W)
    data = json.loads(json.dumps(advice.to_dict()))
    assert data["disclaimer"] == NO_QUALITY_CLAIM
    assert data["when"] == "2026-12-01T12:00:00+00:00"
    assert data["cost_usd"] == "2.75"
    [model] = data["models"]
    assert model["mix"] == {"requests": 100, "input_tokens": 1_000_000,
                            "cached_input_tokens": 200_000, "cache_write_tokens": 0,
                            "output_tokens": 50_000, "reasoning_tokens": 0}
    assert model["billed_for"] == ["input tokens", "output tokens"]
    mini = next(a for a in model["alternatives"] if a["model"] == "gpt-4o-mini")
    assert mini == {"model": "gpt-4o-mini", "priced_as": "openai:gpt-4o-mini",
                    "cost_usd": "0.165", "saving_usd": "2.585", "saving_percent": 94.0}
    text = format_advice(advice, limit=3)
    assert text.startswith(f"Cheaper models: {NO_QUALITY_CLAIM}.")
    assert "genai-prices 0.2.3" in text and "2026-12-01 12:00 UTC" in text
    assert "gpt-4o (priced as openai:gpt-4o)" in text
    assert "100 requests; input 1,000,000 tokens (cached 200,000" in text
    assert "cost at its own price: $2.75" in text
    assert f"... and {len(advice.models[0].alternatives) - 3} more" in text
    table = [line for line in text.splitlines() if line.startswith("  openai:")]
    assert len(table) == 3
    first = advice.models[0].alternatives[0]
    assert first.priced_as in table[0] and f"{first.saving_percent}%" in table[0]
    full = format_advice(advice, limit=100)
    line = next(row for row in full.splitlines() if "openai:gpt-4o-mini " in row)
    assert "$0.165" in line and "$2.585" in line and "94.0%" in line
    negative = format_advice(advise({"gpt-4o-mini": CHAT}, BOOK, provider="openai", when=W,
                                    cheaper_only=False), limit=100)
    assert "-$" in negative and "$-" not in negative


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_manager_advise_reprices_the_months_mix_kept_by_the_store(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The mix the store kept for the month (cached tokens included) gives the same costs as
    the hand prices, through ``manager.advise`` and ``quota-hooks advise``."""
    from quota_hooks import QuotaManager
    from quota_hooks.cli import main
    from quota_hooks.storage import MemoryStore, SQLiteStore
    from quota_hooks.testing import ManualClock

    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "a.db")
    m = QuotaManager(store=store, clock=ManualClock(W.timestamp()))
    for _ in range(100):  # CHAT, one request at a time
        m.record(UsageRecord(workspace_id="acme", model="gpt-4o", provider="openai",
                             input_tokens=10_000, cached_input_tokens=2_000, output_tokens=500))
    [item] = m.advise("acme", provider="openai").models
    assert item.mix == CHAT and item.cost_usd == GPT_4O
    assert {a.model: a.cost_usd for a in item.alternatives}["gpt-4o-mini"] == GPT_4O_MINI
    m.close()
    if kind == "sqlite":
        assert main(["advise", "acme", "--provider", "openai", "--json",
                     "--store", f"sqlite:///{tmp_path / 'a.db'}"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["models"][0]["cost_usd"] == "2.75"
        assert main(["advise", "nobody", "--store", f"sqlite:///{tmp_path / 'a.db'}"]) == 2
        assert "'nobody' has no usage" in capsys.readouterr().err
