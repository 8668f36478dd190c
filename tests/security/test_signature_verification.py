"""Attacks on a receiver's ``verify_signature``: whatever a client puts in (or leaves out of)
the signature and timestamp headers, the answer is False, never an exception (a TypeError in a
receiver is a 500, a crash, or an ``except`` that lets the request through)."""

from __future__ import annotations

from typing import Any

import pytest

from quota_hooks.alerts import sign, verify_signature

SECRET = "receiver-secret"
BODY = b'{"kind":"warning"}'
NOW = 1_767_225_600.0
STAMP = str(int(NOW))
GOOD = sign(SECRET, STAMP, BODY)


def test_a_genuine_signature_verifies() -> None:
    assert verify_signature(SECRET, BODY, STAMP, GOOD, now=NOW)
    assert verify_signature(SECRET.encode(), bytearray(BODY), STAMP, GOOD, now=NOW)


@pytest.mark.parametrize("signature", [
    None, "", "sha256=", "sha256", "garbled", "sha256=" + "zz" * 32, "sha256=" + "0" * 64,
    GOOD[:-1], GOOD + "0", GOOD.upper(), " " + GOOD, "sha1=" + GOOD[7:],
    "sha256=" + "é" * 64, "sha256=\x00", b"sha256=00", 12345, ["sha256=00"],
], ids=repr)
def test_a_missing_empty_garbled_or_non_hex_signature_is_false(signature: Any) -> None:
    assert verify_signature(SECRET, BODY, STAMP, signature, now=NOW) is False


@pytest.mark.parametrize("timestamp", [
    None, "", "abc", "nan", "inf", "-inf", "1e400", "0x10", str(int(NOW) - 301),
    str(int(NOW) + 301), "0", "é", b"1767225600", 1767225600, "1767225600\x00",
], ids=repr)
def test_a_missing_non_numeric_or_stale_timestamp_is_false(timestamp: Any) -> None:
    signature = sign(SECRET, timestamp, BODY) if isinstance(timestamp, str) else GOOD
    assert verify_signature(SECRET, BODY, timestamp, signature, now=NOW) is False


@pytest.mark.parametrize(("secret", "body"), [
    (None, BODY), (SECRET, None), (SECRET, BODY.decode()), (SECRET, 42), (42, BODY),
], ids=repr)
def test_none_or_wrongly_typed_values_are_false(secret: Any, body: Any) -> None:
    assert verify_signature(secret, body, STAMP, GOOD, now=NOW) is False


@pytest.mark.parametrize("secret", ["", b""])
def test_an_empty_receiver_secret_accepts_no_forgery(secret: str | bytes) -> None:
    # An unset secret (os.environ.get("SECRET", "")) must not verify an empty-key HMAC.
    forged = sign(secret, STAMP, BODY)
    assert verify_signature(secret, BODY, STAMP, forged, now=NOW) is False


@pytest.mark.parametrize(("tolerance", "now"), [
    (None, NOW), ("300", NOW), (300.0, "now"), (float("nan"), NOW), (300.0, float("nan")),
], ids=repr)
def test_bad_tolerance_or_clock_values_are_false(tolerance: Any, now: Any) -> None:
    assert verify_signature(SECRET, BODY, STAMP, GOOD, tolerance=tolerance, now=now) is False


def test_the_docstring_states_the_argument_order() -> None:
    assert "verify_signature(secret, body, timestamp, signature)" in (
        verify_signature.__doc__ or "")
