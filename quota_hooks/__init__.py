"""quota-hooks: usage tracking, pricing and quota limits for LLM calls.

The core is framework-free; adapters for OpenAI, LiteLLM and LangChain live in
``quota_hooks.adapters`` and are imported only when you import them.
"""

from __future__ import annotations

from .alerts import Alert, AlertKind, AlertSink
from .compat import WorkspaceTracker, get_default_manager, set_default_manager
from .context import (
    BlockUsage,
    QuotaWorkspaceMiddleware,
    WorkspaceContext,
    current_workspace,
    track,
    tracked,
    workspace,
)
from .errors import (
    ConfigurationError,
    QuotaExceededError,
    QuotaHooksError,
    RateLimitedError,
    StorageError,
)
from .manager import QuotaManager
from .policy import QuotaPolicy
from .pricing import PriceBook, estimate_cost
from .status import AlertLevel, QuotaStatus, StatusReport
from .storage import MemoryStore, Store, store_from_url
from .usage import Estimate, UsageRecord

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "AlertKind",
    "AlertLevel",
    "AlertSink",
    "BlockUsage",
    "ConfigurationError",
    "Estimate",
    "MemoryStore",
    "PriceBook",
    "QuotaExceededError",
    "QuotaHooksError",
    "QuotaManager",
    "QuotaPolicy",
    "QuotaStatus",
    "QuotaWorkspaceMiddleware",
    "RateLimitedError",
    "StatusReport",
    "StorageError",
    "Store",
    "UsageRecord",
    "WorkspaceContext",
    "WorkspaceTracker",
    "current_workspace",
    "estimate_cost",
    "get_default_manager",
    "set_default_manager",
    "store_from_url",
    "track",
    "tracked",
    "workspace",
]
