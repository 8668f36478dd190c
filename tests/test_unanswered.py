"""A request that got no response: a read timeout or a cancellation may come after the
provider took it (and the SDK retries a timeout), so each such attempt counts, at its
estimate; a connection never made sends nothing and gives its reservation back. Over a real
127.0.0.1 server that answers too late, with the real SDK's timeouts and retries."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx2
import openai
import pytest
from raw_server import RawServer, response

from quota_hooks import QuotaHooksError, QuotaManager, QuotaPolicy
from quota_hooks.adapters.openai import track_openai

MSG: Any = [{"role": "user", "content": "hi"}]
BODY = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "ok"}}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                             "total_tokens": 7}}).encode()


def late(request: dict[str, Any]) -> bytes:
    time.sleep(0.6)  # longer than the client waits
    return response(BODY, content_type="application/json", chunked=False)


def manager(rpm: int) -> QuotaManager:
    return QuotaManager(QuotaPolicy(rpm=rpm, rpd=None, tpm=None, tpd=None, mode="raise"))


def test_each_timed_out_attempt_counts_and_the_sdks_retry_meets_the_limit() -> None:
    m = manager(rpm=2)
    server = RawServer(late)
    with server as base_url:
        client = track_openai(openai.OpenAI(api_key="sk-test", base_url=base_url, timeout=0.15,
                                            max_retries=4), workspace_id="ws", manager=m)
        with pytest.raises((QuotaHooksError, openai.APIError)):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        time.sleep(0.1)
        assert len(server.requests) == 2  # the third attempt was refused before it was sent
    status = m.status("ws", enhanced=False)
    assert status.requests_per_minute.current == 2
    records = m.store.recent("workspace:ws", 10)
    assert len(records) == 2 and {r.error_type for r in records} == {"ReadTimeout"}
    assert all(not r.success and r.estimated and r.total_tokens > 0 and r.cost for r in records)
    assert m.store.pending() == 0


async def test_a_cancelled_async_call_counts() -> None:
    m = manager(rpm=10)
    server = RawServer(late)
    with server as base_url:
        client = track_openai(openai.AsyncOpenAI(api_key="sk-test", base_url=base_url,
                                                 max_retries=0), workspace_id="ws", manager=m)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                client.chat.completions.create(model="gpt-4o-mini", messages=MSG), 0.15)
        await asyncio.sleep(0.1)
        assert len(server.requests) == 1
    [record] = m.store.recent("workspace:ws", 10)
    assert record.error_type == "CancelledError" and record.estimated and record.cost
    assert m.status("ws", enhanced=False).requests_per_minute.current == 1
    assert m.store.pending() == 0


def test_a_connection_never_made_is_not_a_request() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens once it is closed
    m = manager(rpm=1)
    client = track_openai(openai.OpenAI(api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1",
                                        max_retries=2,
                                        http_client=httpx2.Client()),
                          workspace_id="ws", manager=m)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert m.status("ws", enhanced=False).requests_per_minute.current == 0
    assert m.store.recent("workspace:ws", 10) == [] and m.store.pending() == 0
