"""Prices that hold when something is wrong: a corrupt or empty snapshot, genai-prices failing,
``reprice`` after the fact, image tokens, Groq's audio minimum, a transcription without usage,
a provider that does not list a model. Every case is one a call could otherwise pass free."""

from __future__ import annotations

import gzip
import json
import logging
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import openai
import pytest
from raw_server import Mirror, RawServer, response

from quota_hooks import (
    Estimate,
    PriceBook,
    QuotaExceededError,
    QuotaManager,
    QuotaPolicy,
    UsageRecord,
)
from quota_hooks.adapters._usage import usage_fields
from quota_hooks.adapters.openai import track_openai
from quota_hooks.cli import main
from quota_hooks.pricing import FALLBACK_FLOOR
from quota_hooks.storage import SQLiteStore
from quota_hooks.usage import reported_usage

T = datetime(2026, 11, 15, 12, tzinfo=UTC)
NO_RATES = {"rpm": None, "rpd": None, "tpm": None, "tpd": None}


def gpt4o(book: PriceBook) -> Decimal | None:
    return book.cost(UsageRecord(model="gpt-4o", provider="openai", input_tokens=1_000_000,
                                 timestamp=T)).usd


def genai(model: str, provider: str, **usage: Any) -> Decimal:
    return genai_prices.calc_price(genai_prices.Usage(**usage), model, provider_id=provider,
                                   genai_request_timestamp=T).total_price


# --------------------------------------------------------------------------- snapshots
@pytest.mark.parametrize("text", [
    '[{"id": "openai", "name": "OpenAI", ',            # truncated
    "[]",                                              # no providers
    '[{"id": "openai"}]',                              # another version's shape
    '{"providers": []}',                               # not a list
    json.dumps([{"id": "acme", "name": "Acme", "api_pattern": "x",
                 "models": [{"id": "acme-1", "match": {"equals": "acme-1"},
                             "prices": {"input_mtok": 1}}]}]),  # loads, but prices nothing known
], ids=["truncated", "empty", "other-shape", "not-a-list", "cut-down"])
def test_an_unusable_updated_snapshot_gives_way_to_the_bundled_one(
        text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    snapshot = tmp_path / "genai-prices.json"
    snapshot.write_text(text)
    monkeypatch.setenv("QUOTA_HOOKS_PRICES_SNAPSHOT", str(snapshot))
    with caplog.at_level(logging.WARNING, "quota_hooks"):
        book = PriceBook.default()
        assert gpt4o(book) == Decimal("2.5")  # the bundled price, not $0 and not unpriced
    assert f"{snapshot} cannot be used" in caplog.text
    assert book.genai is not None
    info = book.genai.info()
    assert "(bundled)" in info.source and "not used" in info.source and info.models > 1000
    cost = book.cost(UsageRecord(model="gpt-4o", input_tokens=1_000, timestamp=T))
    assert cost.source is not None and "(updated)" not in cost.source


def test_a_corrupt_snapshot_does_not_make_calls_free_through_the_adapter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = tmp_path / "genai-prices.json"
    snapshot.write_text('[{"id": "openai", "name": "OpenAI", ')
    monkeypatch.setenv("QUOTA_HOOKS_PRICES_SNAPSHOT", str(snapshot))
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000,
             "total_tokens": 2_000_000}
    body = json.dumps({"id": "c1", "object": "chat.completion", "model": "gpt-4o",
                       "choices": [], "usage": usage}).encode()
    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=1, fail_open=False, **NO_RATES))
    with RawServer(lambda _: response(gzip.compress(body), content_type="application/json",
                                      headers={"content-encoding": "gzip"})) as url:
        client = track_openai(openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0),
                              workspace_id="w", manager=manager)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                                                                  "content": "hi"}])
        with pytest.raises(QuotaExceededError):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                                                                      "content": "hi"}])
    assert manager.status("w").monthly_budget_usd.current == 12.5  # $2.50 + $10.00


def test_genai_prices_failing_charges_the_fallback_never_zero(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    book = PriceBook.bundled()
    assert book.genai is not None

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a price genai-prices cannot work out")

    monkeypatch.setattr(book.genai, "rates", broken)
    with caplog.at_level(logging.ERROR, "quota_hooks"):
        cost = book.cost(UsageRecord(model="gpt-4o-mini", provider="openai",
                                     input_tokens=1_000_000, timestamp=T))
    assert cost.usd is not None and cost.usd >= FALLBACK_FLOOR["input"]
    assert "charged the fallback price" in caplog.text


def test_no_snapshot_at_all_still_charges_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    from genai_prices import data_snapshot

    def gone() -> Any:
        raise OSError("the bundled snapshot is missing")

    monkeypatch.setattr(data_snapshot, "get_snapshot", gone)
    book = PriceBook.bundled()
    usd = book.cost(UsageRecord(model="gpt-4o", input_tokens=1_000_000, output_tokens=1_000_000,
                                timestamp=T)).usd
    assert usd is not None and usd >= FALLBACK_FLOOR["input"] + FALLBACK_FLOOR["output"]
    assert book.genai is not None and book.genai.info().source.startswith("none:")
    assert book.fallback_price().input is not None
    assert book.fallback_price().input >= FALLBACK_FLOOR["input"]


def test_prices_update_refuses_a_snapshot_that_cannot_price(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "genai-prices.json"
    monkeypatch.setenv("QUOTA_HOOKS_PRICES_SNAPSHOT", str(target))
    with Mirror(b"[]") as mirror:
        assert main(["prices", "--update", "--url", mirror.url]) == 2  # no providers
        err = capsys.readouterr().err
        assert "was refused, it holds no providers" in err and "unchanged" in err
        assert not target.exists()
        # One that loads but does not price a model every snapshot has is refused too, and
        # the snapshot in use stays as it was.
        target.write_text("[]")
        mirror.body = json.dumps([{"id": "acme", "name": "Acme", "api_pattern": "x",
                                   "models": [{"id": "a", "match": {"equals": "a"},
                                               "prices": {"input_mtok": 1}}]}]).encode()
        assert main(["prices", "--update", "--url", mirror.url]) == 2
        assert "does not list openai:gpt-4o-mini" in capsys.readouterr().err
        assert target.read_text() == "[]"


# --------------------------------------------------------------------------- reprice
def test_reprice_keeps_a_provided_cost_and_the_reservation_floor(tmp_path: Path) -> None:
    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=100, **NO_RATES),
                           store=SQLiteStore(tmp_path / "q.db", durability="sync"))
    try:
        # The caller's own bill for a model the book prices far lower.
        manager.record(UsageRecord(workspace_id="a", model="gpt-4o-mini", input_tokens=1_000,
                                   output_tokens=1_000, cost=Decimal("4.00")))
        # Untrusted counts settle at the reservation ($0.50 + $1.00).
        held = manager.acquire("b", Estimate(model="gpt-4o", input_tokens=200_000,
                                             output_tokens=100_000))
        manager.record(UsageRecord(workspace_id="b", model="gpt-4o", input_tokens=-5,
                                   output_tokens=float("nan")), held)  # type: ignore[arg-type]
        before = {w: manager.status(w).monthly_budget_usd.current for w in "ab"}
        assert before == {"a": 4.0, "b": 1.5}
        report = manager.reprice(time.time() - 86_400)
        assert report.records == 2
        assert {w: manager.status(w).monthly_budget_usd.current for w in "ab"} == before
    finally:
        manager.close()


# --------------------------------------------------------------------------- image tokens
def test_image_tokens_are_read_from_every_shape() -> None:
    openai_images = {"input_tokens": 60, "output_tokens": 6_240, "total_tokens": 6_300,
                     "input_tokens_details": {"text_tokens": 50, "image_tokens": 10},
                     "output_tokens_details": {"text_tokens": 0, "image_tokens": 6_240}}
    fields = usage_fields(openai_images)
    assert (fields["image_input_tokens"], fields["image_output_tokens"]) == (10, 6_240)
    # Gemini's image model through litellm / an OpenAI-compatible endpoint.
    chat = {"prompt_tokens": 20, "completion_tokens": 1_290, "total_tokens": 1_310,
            "completion_tokens_details": {"image_tokens": 1_290, "text_tokens": 0}}
    assert usage_fields(chat)["image_output_tokens"] == 1_290
    # Gemini's own list by modality.
    listed = {"prompt_tokens": 20, "completion_tokens": 1_300,
              "completion_tokens_details": [{"modality": "IMAGE", "tokenCount": 1_290},
                                            {"modality": "TEXT", "token_count": 10}]}
    assert usage_fields(listed)["image_output_tokens"] == 1_290
    # Image tokens above their total are not trusted.
    bad = dict(chat, completion_tokens_details={"image_tokens": 5_000})
    assert reported_usage(usage_fields(bad), Estimate(model="m"))["estimated"] is True


@pytest.mark.parametrize(("provider", "model", "usage"), [
    ("openai", "gpt-image-1", {"input_tokens": 60, "output_tokens": 6_240,
                               "input_image_tokens": 10, "output_image_tokens": 6_240}),
    ("google", "gemini-2.5-flash-image", {"input_tokens": 20, "output_tokens": 1_290,
                                          "output_image_tokens": 1_290}),
])
def test_image_tokens_cost_what_genai_prices_says(provider: str, model: str,
                                                  usage: dict[str, int]) -> None:
    record = UsageRecord(provider=provider, model=model, timestamp=T,
                         input_tokens=usage["input_tokens"],
                         output_tokens=usage["output_tokens"],
                         image_input_tokens=usage.get("input_image_tokens", 0),
                         image_output_tokens=usage["output_image_tokens"])
    as_text = genai(model, provider, input_tokens=usage["input_tokens"],
                    output_tokens=usage["output_tokens"])
    exact = genai(model, provider, **usage)
    assert exact > as_text  # image tokens are the dear ones
    assert PriceBook.bundled().cost(record).usd == exact


def test_gpt_image_through_the_sdk_is_charged_its_image_tokens() -> None:
    usage = {"input_tokens": 60, "output_tokens": 6_240, "total_tokens": 6_300,
             "input_tokens_details": {"text_tokens": 60, "image_tokens": 0},
             "output_tokens_details": {"text_tokens": 0, "image_tokens": 6_240}}
    body = json.dumps({"created": 1, "data": [{"b64_json": "cG5n"}], "usage": usage}).encode()
    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=100, **NO_RATES))
    with RawServer(lambda _: response(gzip.compress(body), content_type="application/json",
                                      headers={"content-encoding": "gzip"})) as url:
        client = track_openai(openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0),
                              workspace_id="w", manager=manager)
        client.images.generate(model="gpt-image-1", prompt="a cat", size="1024x1024")
    [record] = manager.store.recent("workspace:w", 1)
    assert (record.image_output_tokens, record.output_tokens) == (6_240, 6_240)
    assert record.cost == genai_prices.calc_price(
        genai_prices.Usage(input_tokens=60, output_tokens=6_240, output_image_tokens=6_240),
        "gpt-image-1", provider_id="openai").total_price


# --------------------------------------------------------------------------- audio
@pytest.mark.parametrize("seconds", [2.0, 9.5, 10.0, 31.25])
def test_groq_whisper_is_billed_at_least_ten_seconds(seconds: float) -> None:
    record = UsageRecord(provider="groq", model="whisper-large-v3", audio_seconds=seconds,
                         timestamp=T)
    usd = PriceBook.bundled().cost(record).usd
    assert usd == genai("whisper-large-v3", "groq", audio_seconds=seconds)
    floor = genai("whisper-large-v3", "groq", audio_seconds=10)
    assert usd == floor if seconds <= 10 else usd > floor
    # OpenAI has no such minimum.
    openai_usd = PriceBook.bundled().cost(UsageRecord(
        provider="openai", model="whisper-1", audio_seconds=seconds, timestamp=T)).usd
    assert openai_usd == genai("whisper-1", "openai", audio_seconds=seconds)


def _transcription_server(body: bytes, content_type: str) -> RawServer:
    return RawServer(lambda _: response(body, content_type=content_type, chunked=False))


@pytest.mark.parametrize(("body", "content_type", "seconds", "estimated"), [
    # Groq's json format: no usage, no duration.
    (b'{"text": "hello", "x_groq": {"id": "req_1"}}', "application/json", 25.0, True),
    # response_format="text": a plain body.
    (b"hello\n", "text/plain", 25.0, True),
    # verbose_json: the duration the server measured.
    (b'{"text": "hello", "duration": 7.5, "language": "en"}', "application/json", 7.5, False),
    # A duration of 0 for a 100 kB upload is no duration.
    (b'{"text": "hello", "duration": 0, "language": "en"}', "application/json", 25.0, True),
], ids=["json", "text", "verbose-json", "zero-duration"])
def test_a_transcription_without_usage_is_never_free(body: bytes, content_type: str,
                                                     seconds: float, estimated: bool) -> None:
    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=1, **NO_RATES))
    audio = b"RIFF" + b"\0" * 99_996  # 100 kB of upload: 25 s at 32 kbit/s
    with _transcription_server(body, content_type) as url:
        client = track_openai(openai.OpenAI(api_key="gsk-test", base_url=url, max_retries=0),
                              workspace_id="w", manager=manager)
        client.audio.transcriptions.create(model="whisper-large-v3", file=("a.wav", audio))
    [record] = manager.store.recent("workspace:w", 1)
    assert record.audio_seconds == pytest.approx(seconds, rel=0.01)
    assert record.estimated is estimated
    # At a 127.0.0.1 address the provider is not known: the model is charged the fallback.
    assert record.provider == "openai-compatible" and record.price_source == "unpriced"
    charged = Decimal(str(manager.status("w").monthly_budget_usd.current))
    assert charged == PriceBook.bundled().fallback_cost(record).quantize(Decimal("0.000001"))
    assert charged > 0


# --------------------------------------------------------------------------- providers
@pytest.mark.parametrize(("provider", "model"), [
    ("fireworks", "accounts/fireworks/models/deepseek-v3"),
    ("azure", "Llama-3.3-70B-Instruct"),
])
def test_a_provider_that_does_not_list_a_model_does_not_borrow_a_price(
        provider: str, model: str) -> None:
    book = PriceBook.bundled()
    assert book.rates(model, provider, when=T) is None  # unpriced, not another host's price
    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=1_000, **NO_RATES))
    manager.record(UsageRecord(workspace_id="w", provider=provider, model=model,
                               input_tokens=1_000_000, output_tokens=0))
    # Charged the fallback (the dearest input price), flagged unpriced.
    assert manager.status("w").monthly_budget_usd.current >= float(FALLBACK_FLOOR["input"])
    assert manager.status("w").to_dict()["unpriced"]["calls"] == 1


def test_azure_still_prices_its_openai_models() -> None:
    assert PriceBook.bundled().rates("gpt-4o", "azure", when=T) is not None


@pytest.mark.parametrize(("model", "owner"), [
    ("claude-sonnet-4-20250514", "anthropic"), ("gemini-2.5-pro", "google"),
    ("mistral-large-latest", "mistral"), ("deepseek-chat", "deepseek")])
def test_a_record_that_names_no_provider_goes_by_the_model(model: str, owner: str) -> None:
    """UsageRecord's provider is "openai" by default (the seed's shape): a model OpenAI does
    not list is priced by its own name, as if no provider were given."""
    book = PriceBook.bundled()
    default = book.cost(UsageRecord(model=model, input_tokens=10_000, timestamp=T))
    assert default.usd is not None and default.usd > 0
    assert default.usd == book.cost(UsageRecord(model=model, provider=owner,
                                                input_tokens=10_000, timestamp=T)).usd
