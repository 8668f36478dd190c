"""Quickstart: count a realistic mix of LLM calls and print the status report.

Runs offline with no API key: the records are what the adapters would produce for real calls.

    python examples/quickstart.py
"""

from __future__ import annotations

import json
from decimal import Decimal

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord


def main() -> None:
    # A small policy so that the report has something to say.
    policy = QuotaPolicy(rpm=20, tpm=40_000, monthly_budget_usd=Decimal("0.13"))
    manager = QuotaManager(policy)

    calls = [
        UsageRecord(
            workspace_id="acme",
            model="gpt-4o-mini",
            input_tokens=1_200,
            cached_input_tokens=1_024,
            output_tokens=310,
            latency_ms=640.0,
        ),
        UsageRecord(
            workspace_id="acme",
            model="gpt-4o-2024-08-06",
            input_tokens=2_400,
            output_tokens=900,
            latency_ms=1_850.0,
            scopes={"team": "search"},
        ),
        UsageRecord(
            workspace_id="acme",
            model="o4-mini",
            input_tokens=800,
            output_tokens=2_100,
            reasoning_tokens=1_600,
            latency_ms=4_200.0,
        ),
        UsageRecord(
            workspace_id="acme",
            model="text-embedding-3-small",
            api_method="embeddings",
            input_tokens=8_000,
            latency_ms=120.0,
        ),
        UsageRecord(
            workspace_id="acme",
            model="dall-e-3",
            api_method="images.generate",
            images=1,
            image_size="1024x1024",
            image_quality="hd",
        ),
        UsageRecord(
            workspace_id="acme",
            model="whisper-1",
            api_method="audio.transcriptions",
            audio_seconds=95.0,
        ),
        UsageRecord(
            workspace_id="acme",
            model="gpt-4o-mini",
            success=False,
            status_code=429,
            error_type="RateLimitError",
        ),
        UsageRecord(workspace_id="acme", model="unknown", api_method="models"),
    ]
    for call in calls:
        manager.record(call)
        usd = manager.prices.cost(call).usd
        cost = "unpriced" if usd is None else f"${usd:.6f}"
        print(f"{call.api_method:<22} {call.model:<24} {call.total_tokens:>6} tok  {cost}")

    report = manager.status("acme")
    print(f"\nstatus: {report.status.value}   alert level: {report.alert_level.value}")
    for metric, usage in report.limits.items():
        print(f"  {metric:<20} {usage.current:>10} / {usage.limit}  ({usage.percentage:.2f}%)")

    print("\nenhanced status JSON:")
    print(json.dumps(manager.get_tracker("acme").get_enhanced_status_data(), indent=2))


if __name__ == "__main__":
    main()
