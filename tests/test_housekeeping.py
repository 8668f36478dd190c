"""Calls on stored objects (retrieving, listing, deleting a response or a stored chat
completion; polling a batch) through the real OpenAI SDK against a 127.0.0.1 server: what a
call generated is counted once, a poll never counts it again, and housekeeping is never
charged an estimate at the fallback price."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

import genai_prices
import openai
import pytest
from raw_server import RawServer, response

from quota_hooks import QuotaManager, QuotaPolicy
from quota_hooks.adapters.openai import track_openai

USAGE = {"input_tokens": 1_000, "output_tokens": 2_000, "total_tokens": 3_000,
         "input_tokens_details": {"cached_tokens": 0},
         "output_tokens_details": {"reasoning_tokens": 0}}


def a_response(status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": status,
            "model": "gpt-4o-mini", "output": [], "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [], "usage": usage}


def serve(route: Callable[[str], dict[str, Any]]) -> tuple[RawServer, Callable[[], None]]:
    """A gzip-compressing server; ``route(request line)`` gives the JSON answer."""
    server: RawServer

    def answer(_: dict[str, Any]) -> bytes:
        body = json.dumps(route(server.lines[-1])).encode()
        return response(gzip.compress(body), content_type="application/json",
                        headers={"content-encoding": "gzip"})

    server = RawServer(answer)
    return server, lambda: None


def tracked(url: str, manager: QuotaManager) -> openai.OpenAI:
    return track_openai(openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0),
                        workspace_id="w", manager=manager)


def tokens(manager: QuotaManager) -> tuple[int, float]:
    status = manager.status("w")
    return status.tokens_per_day.current, status.monthly_budget_usd.current


def test_a_finished_response_counts_once_and_housekeeping_costs_nothing() -> None:
    def route(line: str) -> dict[str, Any]:
        if line.startswith("DELETE"):
            return {"id": "resp_1", "object": "response.deleted", "deleted": True}
        if "/input_items" in line:
            return {"object": "list", "data": [], "first_id": None, "last_id": None,
                    "has_more": False}
        return a_response("completed", USAGE)

    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=1_000))
    server, _ = serve(route)
    with server as url:
        client = tracked(url, manager)
        client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=2_000)
        after_create = tokens(manager)
        client.responses.retrieve("resp_1")
        client.responses.retrieve("resp_1")
        client.responses.input_items.list("resp_1")
        client.responses.delete("resp_1")
    assert after_create[0] == 3_000
    assert tokens(manager) == after_create
    methods = [r.api_method for r in manager.store.recent("workspace:w", 10)]
    assert methods == ["responses.delete", "responses.input_items", "responses.retrieve",
                       "responses.retrieve", "responses"]
    assert server.lines[-1].startswith("DELETE /v1/responses/resp_1")


def test_a_background_response_is_counted_at_its_estimate_then_topped_up() -> None:
    states = iter(["queued", "in_progress", "completed", "completed"])

    def route(line: str) -> dict[str, Any]:
        state = next(states)
        return a_response(state, USAGE if state == "completed" else None)

    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=1_000))
    server, _ = serve(route)
    with server as url:
        client = tracked(url, manager)
        client.responses.create(model="gpt-4o-mini", input="hi", background=True,
                                max_output_tokens=500)
        held, _ = tokens(manager)
        assert 500 <= held < 3_000  # the estimate: max_output_tokens and the prompt
        for _ in range(3):
            client.responses.retrieve("resp_1")
    used, cost = tokens(manager)
    assert used == 3_000  # exactly its usage, once: the estimate topped up, then nothing
    exact = genai_prices.calc_price(genai_prices.Usage(input_tokens=1_000, output_tokens=2_000),
                                    "gpt-4o-mini", provider_id="openai").total_price
    assert cost == pytest.approx(float(exact), abs=1e-6)


def test_a_cancelled_background_response_counts_its_usage_once() -> None:
    states = iter(["queued", "cancelled", "cancelled"])

    def route(line: str) -> dict[str, Any]:
        state = next(states)
        return a_response(state, USAGE if state == "cancelled" else None)

    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=1_000))
    server, _ = serve(route)
    with server as url:
        client = tracked(url, manager)
        client.responses.create(model="gpt-4o-mini", input="hi", background=True,
                                max_output_tokens=500)
        client.responses.cancel("resp_1")  # what it did before the cancel is billed
    assert tokens(manager)[0] == 3_000  # never retrieved: the cancel's answer tops it up


def test_a_stored_chat_completion_is_not_counted_again() -> None:
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                  "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "stop",
                                                       "message": {"role": "assistant",
                                                                   "content": "hi"}}],
                  "usage": {"prompt_tokens": 1_000, "completion_tokens": 2_000,
                            "total_tokens": 3_000}}

    def route(line: str) -> dict[str, Any]:
        if "/messages" in line:
            return {"object": "list", "data": [], "first_id": None, "last_id": None,
                    "has_more": False}
        if line.startswith("DELETE"):
            return {"id": "chatcmpl-1", "object": "chat.completion.deleted", "deleted": True}
        return completion

    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=1_000))
    server, _ = serve(route)
    with server as url:
        client = tracked(url, manager)
        client.chat.completions.create(model="gpt-4o-mini", store=True,
                                       messages=[{"role": "user", "content": "hi"}])
        after_create = tokens(manager)
        client.chat.completions.retrieve("chatcmpl-1")
        client.chat.completions.messages.list("chatcmpl-1")
        client.chat.completions.delete("chatcmpl-1")
    assert after_create[0] == 3_000 and tokens(manager) == after_create


@pytest.mark.parametrize("end", ["completed", "cancelled", "expired"])
def test_a_batch_is_counted_once_when_it_ends_at_the_batch_price(end: str) -> None:
    states = iter(["validating", "in_progress", end, end, end])

    def route(line: str) -> dict[str, Any]:
        state = next(states)
        batch = {"id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions",
                 "model": "gpt-4o", "input_file_id": "file-1", "completion_window": "24h",
                 "status": state, "created_at": 1}
        if state == end:
            batch["usage"] = {"input_tokens": 2_000_000, "output_tokens": 500_000,
                              "total_tokens": 2_500_000,
                              "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens_details": {"reasoning_tokens": 0}}
        return batch

    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=1_000))
    server, _ = serve(route)
    with server as url:
        client = tracked(url, manager)
        client.batches.create(input_file_id="file-1", endpoint="/v1/chat/completions",
                              completion_window="24h")
        for _ in range(4):
            client.batches.retrieve("batch_1")
    used, cost = tokens(manager)
    exact = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=2_000_000, output_tokens=500_000), "gpt-4o",
        provider_id="openai", price_context={"processing": "batch"}).total_price
    assert used == 2_500_000
    assert cost == pytest.approx(float(exact)) and exact == 5  # half of $2.50/1M and $10/1M
