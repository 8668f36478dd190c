"""Write your own alert sink: one async ``send(alert)`` method, or any plain function.

quota-hooks calls sinks off the hot path, with a timeout: a sink that raises or hangs never
slows or breaks an LLM call, and never holds up the other sinks.

    python examples/custom_alert_sink.py
"""

from __future__ import annotations

from decimal import Decimal

import httpx2
from openai import OpenAI

from quota_hooks import Alert, AlertKind, QuotaManager, QuotaPolicy
from quota_hooks.adapters.openai import track_openai
from quota_hooks.testing import FakeOpenAI, FakeUsage


class OnCallSink:
    """Pages the on-call engineer for critical alerts and keeps a log of the rest."""

    def __init__(self) -> None:
        self.paged: list[str] = []
        self.log: list[str] = []

    async def send(self, alert: Alert) -> None:
        line = f"[{alert.kind.value}] {alert.message}"
        if alert.kind in (AlertKind.CRITICAL, AlertKind.QUOTA_EXCEEDED):
            self.paged.append(line)  # here: call your pager's API (with httpx, say)
        else:
            self.log.append(line)


def flaky_sink(alert: Alert) -> None:
    """A plain function works too; this one always fails, and nothing else notices."""
    raise RuntimeError("the chat service is down")


on_call = OnCallSink()
manager = QuotaManager(
    # "observe": count and alert, never refuse (by default the budget refuses calls that no
    # longer fit, before they are sent; see examples/quickstart.py and the README).
    QuotaPolicy(rpm=10, monthly_budget_usd=Decimal("0.0033"), mode="observe"),
    sinks=[on_call, flaky_sink],
)

fake = FakeOpenAI(FakeUsage(input_tokens=1_000, output_tokens=300))
client = track_openai(
    OpenAI(api_key="sk-test", base_url="http://fake/v1",
           http_client=httpx2.Client(transport=fake.transport())),
    workspace_id="acme", manager=manager,
)
for _ in range(10):
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Summarize the ticket."}]
    )

manager.drain()  # alerts are delivered in the background; wait for them before reading
print("paged:")
for line in on_call.paged:
    print("  " + line)
print("logged:")
for line in on_call.log:
    print("  " + line)
assert manager.alerts is not None
print(f"\nsent {manager.alerts.sent}, failed {manager.alerts.failed} (the flaky sink), "
      f"dropped {manager.alerts.dropped}")
manager.close()
