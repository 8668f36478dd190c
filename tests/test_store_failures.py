"""A store that hangs or fills never holds a call beyond a stated bound, and never loses a
record silently.

* Redis SIGSTOPped (a hung server, a partition): each tracked call returns within 1 s plus its
  own latency; ``fail_open`` lets it through (counted), ``fail_open=False`` refuses it.
* SQLite on a full disk (a real 1 MiB tmpfs): calls keep running, the status says
  ``degraded``, and what could not be written is counted; once there is room again, the
  queued records land.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from quota_hooks import QuotaManager, QuotaPolicy, StorageError
from quota_hooks.adapters.openai import track_openai
from quota_hooks.storage import SQLiteStore
from quota_hooks.testing import FakeOpenAI

MSG = [{"role": "user", "content": "hi"}]
CALL_BOUND = 1.0  # seconds a tracked call may spend on a hung store, beyond its own latency


def _need(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {why} (.ci/run provides it)")
        pytest.skip(f"needs {why}")




def tracked(m: QuotaManager, fake: FakeOpenAI) -> openai.OpenAI:
    return track_openai(openai.OpenAI(api_key="k", base_url="http://fake/v1", max_retries=0,
                                      http_client=httpx2.Client(transport=fake.transport())),
                        workspace_id="ws", manager=m)


def timed_calls(client: openai.OpenAI, n: int) -> list[float]:
    took = []
    for _ in range(n):
        started = time.perf_counter()
        with contextlib.suppress(StorageError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        took.append(time.perf_counter() - started)
    return took


@pytest.mark.parametrize("durability", ["sync", "batched"])
def test_a_sigstopped_redis_holds_no_call_for_long(
    own_redis: tuple[str, subprocess.Popen[bytes]], durability: str,
) -> None:
    from quota_hooks.storage.redis import RedisStore

    url, process = own_redis
    fake = FakeOpenAI()
    store = RedisStore.from_url(url, durability=durability)  # type: ignore[arg-type]
    m = QuotaManager(QuotaPolicy(rpm=1_000), store=store)
    client = tracked(m, fake)
    baseline = max(timed_calls(client, 3))  # warm: connections made, scripts loaded
    assert m.status("ws").requests_per_minute.current == 3
    process.send_signal(signal.SIGSTOP)
    try:
        took = timed_calls(client, 5)
        assert len(fake.requests) == 3 + 5  # fail_open: every call went on
        assert max(took) < CALL_BOUND + baseline, took
        assert m.fail_open_calls == 5
        assert m.tracking_errors >= (5 if durability == "sync" else 0)

        strict = QuotaManager(QuotaPolicy(rpm=1_000, fail_open=False),
                              store=RedisStore.from_url(url))
        started = time.perf_counter()
        with pytest.raises(StorageError, match="fail_open=False"):
            tracked(strict, fake).chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert time.perf_counter() - started < CALL_BOUND
        assert len(fake.requests) == 8  # refused before it was sent
    finally:
        process.send_signal(signal.SIGCONT)
    timed_calls(client, 1)  # back: this commit goes through and replays the held ones
    assert store.flush(10)
    # Every call is recorded exactly once: the 5 held commits were replayed, and a commit
    # that Redis ran after its reply timed out (it reads what was sent once it resumes) is
    # not counted again (its id is remembered).
    assert m.store.health() is None
    records = m.store.recent("workspace:ws", 100)
    assert len(records) == 3 + 5 + 1
    # And exactly: a reserve that timed out but ran once Redis resumed had its hold given
    # back, so no call counts twice.
    assert m.status("ws").requests_per_minute.current == 9


def test_redis_timeouts_come_from_the_url() -> None:
    from quota_hooks.storage.redis import CONNECT_TIMEOUT, RedisStore

    store = RedisStore.from_url("redis://127.0.0.1:1/0?socket_timeout=0.5&timeout=2")
    kwargs = store.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.5
    assert kwargs["socket_connect_timeout"] == CONNECT_TIMEOUT
    assert store.client.connection_pool.timeout == 2
    started = time.perf_counter()
    with pytest.raises(StorageError):  # nothing listens on port 1: refused at once
        store.counters("workspace:ws", time.time(), "2026-12")
    assert time.perf_counter() - started < CALL_BOUND


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (mounting needs root: CI runs as root)."""
    where = tmp_path / "tiny"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                             capture_output=True).returncode == 0
    _need(mounted, "permission to mount a tmpfs (root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(where: Path) -> Path:
    filler = where / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return filler


def test_a_full_disk_holds_no_call_and_shows_degraded(full_disk: Path) -> None:
    store = SQLiteStore(full_disk / "quota.db", write_timeout=60)
    fake = FakeOpenAI()
    m = QuotaManager(QuotaPolicy(rpm=10_000), store=store)
    client = tracked(m, fake)
    baseline = max(timed_calls(client, 3))
    assert store.flush(5)
    filler = _fill(full_disk)
    took = timed_calls(client, 200)
    assert len(fake.requests) == 203  # every call went on
    assert max(took) < CALL_BOUND + baseline, max(took)
    assert sum(took) < 20, sum(took)  # not a full wait per call
    assert m.status("ws").status.value == "degraded"
    assert store.health() is not None and store.write_errors > 0
    # Room again: the records queued meanwhile reach the file, none lost.
    filler.unlink()
    assert store.flush(30)
    assert store.health() is None or store.dropped_records == 0
    assert store.dropped_records == 0
    assert m.status("ws").requests_per_minute.current == 203
    started = time.perf_counter()
    store.close(timeout=5)
    assert time.perf_counter() - started < 5.5


def test_a_disk_full_for_good_drops_counted_and_never_blocks(full_disk: Path) -> None:
    store = SQLiteStore(full_disk / "quota.db", write_timeout=0.2, queue_size=50)
    fake = FakeOpenAI()
    m = QuotaManager(QuotaPolicy(rpm=10_000), store=store)
    client = tracked(m, fake)
    timed_calls(client, 2)
    assert store.flush(5)
    _fill(full_disk)
    took = timed_calls(client, 300)  # the queue of 50 fills; the rest is dropped, counted
    assert max(took) < CALL_BOUND, max(took)
    time.sleep(0.5)  # the writer gives up on what it holds after write_timeout
    assert store.dropped_records >= 250
    assert m.status("ws").status.value == "degraded"
    started = time.perf_counter()
    store.close(timeout=5)
    assert time.perf_counter() - started < 5.5
