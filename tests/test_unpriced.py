"""A model without a price never walks past a money budget: by default it is charged at the
price book's fallback (its dearest prices); ``unpriced="refuse"`` refuses it; ``"allow"``
lets it pass uncharged. Its cost is ``null`` in the JSON either way, never ``0.0``."""

from __future__ import annotations

from decimal import Decimal

import httpx2
import openai
import pytest

from quota_hooks import Estimate, QuotaExceededError, QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.adapters.openai import track_openai
from quota_hooks.pricing import PriceBook, to_nanos
from quota_hooks.testing import FakeOpenAI, FakeUsage

pytestmark = pytest.mark.unit

MSG = [{"role": "user", "content": "hi"}]
ONLY_BUDGET = {"rpm": None, "rpd": None, "tpm": None, "tpd": None}


def client_for(m: QuotaManager, fake: FakeOpenAI) -> openai.OpenAI:
    return track_openai(openai.OpenAI(api_key="k", base_url="http://fake/v1", max_retries=0,
                                      http_client=httpx2.Client(transport=fake.transport())),
                        workspace_id="ws", manager=m)


def test_the_issues_measurement_an_unknown_model_cannot_pass_a_tiny_budget() -> None:
    """200 calls of 150k tokens to a model without a price, a $0.001 budget: before, all 200
    went through at $0 and the status said normal."""
    def run(budget: str) -> tuple[QuotaManager, int, FakeOpenAI]:
        m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal(budget), **ONLY_BUDGET))
        fake = FakeOpenAI(FakeUsage(input_tokens=150_000, output_tokens=10))
        client = client_for(m, fake)
        sent = 0
        for _ in range(200):
            try:
                client.chat.completions.create(model="my-local-llm", messages=MSG, max_tokens=1)
            except QuotaExceededError:
                continue
            sent += 1
        return m, sent, fake

    # At the dearest prices of the book even the estimate of one call is over $0.001.
    m, sent, fake = run("0.001")
    assert sent == 0 and not fake.requests
    # With $1 the first call's estimate fits; its real 150k tokens do not, nor anything after.
    m, sent, fake = run("1")
    assert sent == 1 and len(fake.requests) == 1
    status = m.status("ws")
    assert status.status.value == "quota_exceeded"
    assert status.unpriced.calls == 1 and status.unpriced.policy == "fallback"
    assert status.unpriced.charge_usd == pytest.approx(status.monthly_budget_usd.current)
    model = status.to_dict()["enhanced_tracking"]["models_breakdown"]["my-local-llm"]
    assert model["cost_usd"] is None and model["unpriced_count"] == 1  # never 0.0
    assert model["unpriced_charge_usd"] > 1


def test_the_fallback_is_the_dearest_price_and_can_be_set() -> None:
    book = PriceBook.default()
    dearest = book.fallback_price()
    # genai-prices' dearest today: o1-pro, $150 in and $600 out per 1M.
    o1_pro = book.price("o1-pro", "openai")
    assert o1_pro is not None and (o1_pro.input, o1_pro.output) == (150, 600)
    assert (dearest.input, dearest.output) == (o1_pro.input, o1_pro.output)
    record = UsageRecord(model="nobody-knows", input_tokens=1_000_000, output_tokens=1_000_000)
    assert book.fallback_cost(record) == dearest.input + dearest.output  # per 1M each
    cheap = book.with_fallback({"input": "1", "output": "2"})
    assert cheap.fallback_cost(record) == Decimal(3)
    assert cheap.price("gpt-4o-mini") == book.price("gpt-4o-mini")  # nothing else changes


def test_the_reservation_of_an_unknown_model_is_not_free() -> None:
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal(100), **ONLY_BUDGET))
    reservation = m.acquire("ws", Estimate(model="my-local-llm", input_tokens=100,
                                           output_tokens=100))
    assert reservation is not None
    assert reservation.delta.cost_nanos == m.prices.fallback_nanos(100, 100) > 0
    # A known model reserves its own price, far less.
    known = m.acquire("ws", Estimate(model="gpt-4o-mini", input_tokens=100, output_tokens=100))
    assert known is not None and 0 < known.delta.cost_nanos < reservation.delta.cost_nanos


def test_refuse_refuses_before_the_call_is_sent() -> None:
    m = QuotaManager(QuotaPolicy(unpriced="refuse", **ONLY_BUDGET))
    fake = FakeOpenAI()
    client = client_for(m, fake)
    with pytest.raises(QuotaExceededError, match="'my-local-llm' has no price") as caught:
        client.chat.completions.create(model="my-local-llm", messages=MSG)
    assert caught.value.limit == "monthly_budget_usd" and not fake.requests
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # priced: fine
    assert len(fake.requests) == 1 and m.denials == 1


def test_refuse_without_an_enforced_budget_lets_it_pass() -> None:
    m = QuotaManager(QuotaPolicy(unpriced="refuse", monthly_budget_usd=None))
    client_for(m, FakeOpenAI()).chat.completions.create(model="my-local-llm", messages=MSG)
    assert m.status("ws").unpriced.calls == 1


def test_allow_passes_uncharged_and_still_shows_null() -> None:
    m = QuotaManager(QuotaPolicy(unpriced="allow", monthly_budget_usd=Decimal("0.000001"),
                                 **ONLY_BUDGET))
    client = client_for(m, FakeOpenAI(FakeUsage(input_tokens=150_000)))
    for _ in range(5):
        client.chat.completions.create(model="my-local-llm", messages=MSG)
    status = m.status("ws")
    assert status.monthly_budget_usd.current == 0 and status.unpriced.calls == 5
    data = status.to_dict()
    assert data["enhanced_tracking"]["models_breakdown"]["my-local-llm"]["cost_usd"] is None
    assert data["enhanced_tracking"]["recent_activity"][0]["cost_usd"] is None
    assert data["unpriced"] == {"calls": 5, "charge_usd": 0.0, "policy": "allow"}


def test_a_partly_priced_model_shows_its_partial_sum_beside_the_unpriced_count() -> None:
    book = PriceBook.default().with_overrides({"half-known": {"input": "1.00"}})  # no output
    m = QuotaManager(QuotaPolicy.unlimited(), prices=book)
    m.record(UsageRecord(workspace_id="ws", model="half-known", input_tokens=1_000_000))
    m.record(UsageRecord(workspace_id="ws", model="half-known", input_tokens=10,
                         output_tokens=10))  # output has no price: unpriced
    row = m.status("ws").to_dict()["enhanced_tracking"]["models_breakdown"]["half-known"]
    assert row["cost_usd"] == 1.0 and row["unpriced_count"] == 1
    assert row["unpriced_charge_usd"] == pytest.approx(
        float(book.fallback_cost(UsageRecord(model="x", input_tokens=10, output_tokens=10))))
    assert m.store.counters("workspace:ws", m.now(), "2026-12").cost_month_nanos >= to_nanos(
        Decimal(1))
