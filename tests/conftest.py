from __future__ import annotations

import os

# litellm must never reach the network in tests (price map, tokenizers).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

import pytest

from quota_hooks import QuotaManager, QuotaPolicy
from quota_hooks.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_767_225_600.0)  # 2026-01-01T00:00:00Z, on a minute boundary


@pytest.fixture
def manager(clock: ManualClock) -> QuotaManager:
    return QuotaManager(QuotaPolicy(), clock=clock)
