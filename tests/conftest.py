from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time

# litellm must never reach the network in tests (price map, tokenizers).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

from collections.abc import Iterator
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal
from store_helpers import BACKENDS, Ops, dispose, make_store

from quota_hooks import QuotaManager, QuotaPolicy
from quota_hooks.adapters._pairing import no_marks
from quota_hooks.storage import Store
from quota_hooks.testing import ManualClock


@pytest.fixture(autouse=True)
def _own_run_marks() -> Iterator[None]:
    """Each test starts with no open LangChain run marks in its context: pytest runs every
    test in one thread, and a test that starts runs it never ends (on purpose) would otherwise
    hand them to the next test."""
    with no_marks():
        yield


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_767_225_600.0)  # 2026-01-01T00:00:00Z, on a minute boundary


@pytest.fixture
def manager(clock: ManualClock) -> QuotaManager:
    return QuotaManager(QuotaPolicy(), clock=clock)


_LITELLM_LISTS = ("callbacks", "success_callback", "failure_callback", "_async_success_callback",
                  "_async_failure_callback", "input_callback", "service_callback")


@pytest.fixture
def clean_litellm_callbacks() -> Iterator[None]:
    """Restore litellm's callback lists after a test: litellm copies ``litellm.callbacks``
    into internal success/failure lists, so replacing ``litellm.callbacks`` alone would leave
    an earlier test's logger receiving this test's events."""
    import litellm

    saved = {name: list(getattr(litellm, name, []) or []) for name in _LITELLM_LISTS}
    yield
    for name, value in saved.items():
        if hasattr(litellm, name):
            setattr(litellm, name, value)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every backend in turn: memory, SQLite and Redis (the conformance table)."""
    backend = make_store(request.param, tmp_path)
    yield backend
    dispose(backend)


@pytest.fixture(params=["sync", "async"])
def ops(request: pytest.FixtureRequest, store: Store) -> Iterator[Ops]:
    """Every backend in both modes: its sync face, and its async face on one event loop."""
    if request.param == "sync":
        yield Ops(store)
        return
    with start_blocking_portal() as portal:
        yield Ops(store, portal)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own (its URL and process), so that stopping it disturbs
    no other test and its command statistics are this test's alone. In CI a missing
    redis-server fails the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs redis-server on PATH (.ci/run installs it)")
        pytest.skip("needs redis-server on PATH")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                         timeout=0.1):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(5)
