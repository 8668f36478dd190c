from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from quota_hooks import ConfigurationError, QuotaPolicy

pytestmark = pytest.mark.unit


def test_defaults_are_the_seed_guides() -> None:
    policy = QuotaPolicy.from_env({})
    assert (policy.rpm, policy.rpd, policy.tpm, policy.tpd) == (500, 10_000, 150_000, 2_000_000)
    assert policy.monthly_budget_usd == Decimal(100)
    assert (policy.warning_percent, policy.critical_percent) == (80, 95)
    assert policy == QuotaPolicy()


def test_from_env_reads_every_variable() -> None:
    policy = QuotaPolicy.from_env(
        {
            "OPENAI_RATE_LIMIT_PER_MINUTE": "60",
            "OPENAI_RATE_LIMIT_PER_DAY": "none",
            "OPENAI_TOKEN_LIMIT_PER_MINUTE": "1_000",
            "OPENAI_DAILY_TOKEN_LIMIT": " 5000 ",
            "OPENAI_MONTHLY_BUDGET_USD": "12.50",
            "OPENAI_WARNING_THRESHOLD_PERCENT": "70",
            "OPENAI_CRITICAL_THRESHOLD_PERCENT": "90.5",
        }
    )
    assert (policy.rpm, policy.rpd, policy.tpm, policy.tpd) == (60, None, 1_000, 5_000)
    assert policy.monthly_budget_usd == Decimal("12.50")
    assert (policy.warning_percent, policy.critical_percent) == (70, 90.5)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OPENAI_RATE_LIMIT_PER_MINUTE", "fast"),
        ("OPENAI_RATE_LIMIT_PER_MINUTE", "-1"),
        ("OPENAI_RATE_LIMIT_PER_DAY", "1.5"),
        ("OPENAI_MONTHLY_BUDGET_USD", "lots"),
        ("OPENAI_MONTHLY_BUDGET_USD", "NaN"),
        ("OPENAI_MONTHLY_BUDGET_USD", "-3"),
        ("OPENAI_WARNING_THRESHOLD_PERCENT", "180"),
        ("OPENAI_CRITICAL_THRESHOLD_PERCENT", "none"),
    ],
)
def test_bad_env_value_names_variable_and_value(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        QuotaPolicy.from_env({variable: value})
    assert variable in str(info.value) and repr(value) in str(info.value)


def test_inverted_thresholds_name_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"warning_percent.*critical_percent"):
        QuotaPolicy.from_env(
            {"OPENAI_WARNING_THRESHOLD_PERCENT": "96", "OPENAI_CRITICAL_THRESHOLD_PERCENT": "95"}
        )


def test_constructor_validates_with_field_names() -> None:
    with pytest.raises(ValidationError, match="rpm"):
        QuotaPolicy(rpm=-1)
    with pytest.raises(ValidationError, match="Mars/Olympus"):
        QuotaPolicy(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="rmp"):
        QuotaPolicy(rmp=5)  # type: ignore[call-arg]


def test_unlimited() -> None:
    policy = QuotaPolicy.unlimited()
    assert all(policy.limit(m) is None for m in ("rpm", "rpd", "tpm", "tpd", "monthly_budget_usd"))
    with pytest.raises(ConfigurationError, match="'rps'"):
        policy.limit("rps")


def test_a_scope_policy_for_a_long_name_applies_to_its_calls() -> None:
    # Scope names are bounded to 200 characters (a start and a hash); a policy keyed by the
    # whole name is looked up the same way, so it holds for that user (it never did).
    from quota_hooks import QuotaManager, RateLimitedError
    from quota_hooks.usage import Estimate

    long = "u" * 300
    m = QuotaManager(QuotaPolicy.unlimited(),
                     scope_policies={f"user:{long}": QuotaPolicy(rpm=2)})
    call = Estimate(model="gpt-4o-mini", api_method="chat.completions", input_tokens=1)
    m.acquire("acme", call, scopes={"user": long})
    m.acquire("acme", call, scopes={"user": long})
    with pytest.raises(RateLimitedError):
        m.acquire("acme", call, scopes={"user": long})
    assert m.policies.code_policy(f"user:{long}") == QuotaPolicy(rpm=2)
    m.close()
