"""Tokens out of the logs: a :class:`logging.Filter` for uvicorn's loggers.

The WebSocket takes its token as ``?token=`` (browsers cannot set headers on a WebSocket), and
uvicorn writes every request line, WebSocket handshakes included, with its query:
``uvicorn.access`` for HTTP (the path is one of the record's ``args``) and ``uvicorn.error``
for ``"WebSocket /path?query" [accepted]``; at debug level, the WebSocket library also writes
every handshake header there, the dashboard's ``Sec-WebSocket-Protocol: quota-hooks,
bearer.<token>`` and an ``Authorization: Bearer <token>`` included.
:class:`TokenRedactingFilter` replaces the value of every query parameter whose name holds
``token``, and the token of a ``bearer.`` subprotocol or a ``Bearer``/``Basic`` credential,
with ``[redacted]`` before any handler sees the record; :func:`install_token_redaction` puts
one on each of those loggers, once per process (:func:`~quota_hooks.server.quota_router` calls it).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

__all__ = ["REDACTED", "TokenRedactingFilter", "install_token_redaction", "redact_tokens"]

REDACTED = "[redacted]"
#: The loggers uvicorn writes request paths to.
UVICORN_LOGGERS = ("uvicorn.access", "uvicorn.error")
#: ``?name=value`` or ``&name=value``: the value runs to the next ``&`` or blank, whatever
#: printable characters a token holds.
_PARAMETER = re.compile(r"(?P<lead>[?&](?P<name>[^=&\s?#]*)=)(?P<value>[^&\s]*)")
#: ``bearer.<token>`` in a subprotocol list (the token runs to a comma or blank), and the
#: credentials of an ``Authorization`` header (``Bearer <token>``, ``Basic <base64>``).
_CREDENTIAL = re.compile(
    r"(?P<lead>\bbearer\.)(?P<value>[^\s,;\"']+)|"
    r"(?P<scheme>\b(?:bearer|basic)\s+)(?P<credential>[^\s,;\"']{8,})", re.IGNORECASE)
_lock = threading.Lock()


def _secret(name: str) -> bool:
    return "token" in unquote_plus(name).strip().lower()


def redact_tokens(text: str) -> str:
    """``text`` with the values of its ``token`` query parameters (any case, percent-encoded
    names included, and names such as ``access_token``), the token of a ``bearer.<token>``
    WebSocket subprotocol and ``Bearer``/``Basic`` credentials replaced by ``[redacted]``."""
    if "=" in text:
        text = _PARAMETER.sub(
            lambda m: m["lead"] + REDACTED if m["value"] and _secret(m["name"]) else m[0], text
        )
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered:
        text = _CREDENTIAL.sub(_redact_credential, text)
    return text


def _redact_credential(match: re.Match[str]) -> str:
    lead = match["lead"] or match["scheme"]
    value = match["value"] or match["credential"]
    return match[0] if value == REDACTED else lead + REDACTED


def _redacted(value: Any) -> Any:
    return redact_tokens(value) if isinstance(value, str) else value


class TokenRedactingFilter(logging.Filter):
    """Redacts token query values in a record's message and arguments; drops nothing."""

    #: Marks this filter on a logger, whichever copy of the module made it.
    redacts_tokens = True

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redacted(arg) for arg in args)
        elif isinstance(args, Mapping):
            record.args = {key: _redacted(value) for key, value in args.items()}
        return True


def install_token_redaction(loggers: tuple[str, ...] = UVICORN_LOGGERS) -> None:
    """Put a :class:`TokenRedactingFilter` on each of ``loggers`` that has none yet.

    Idempotent and thread-safe: calling it again (another router, another app) adds nothing.
    The filter sits on the logger itself, so it applies to every handler, and survives
    ``logging.config.dictConfig`` (which uvicorn runs at start), which replaces handlers only.
    """
    with _lock:
        for name in loggers:
            logger = logging.getLogger(name)
            if not any(getattr(f, "redacts_tokens", False) for f in logger.filters):
                logger.addFilter(TokenRedactingFilter())
