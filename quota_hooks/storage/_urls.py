"""Store URLs as messages and logs may show them: :func:`redacted`."""

from __future__ import annotations

from urllib.parse import unquote_plus

__all__ = ["redacted"]

_SECRET_KEYS = ("password", "pass", "pwd", "token", "secret", "key", "auth")
_UNPARSABLE = "<a store URL that could not be parsed>"


def _secret_key(name: str) -> bool:
    lowered = unquote_plus(name).lower()
    return any(word in lowered for word in _SECRET_KEYS)


def redacted(url: str) -> str:
    """``url`` fit for a message or a log: any user info shown as ``user:***@`` (``***@``
    without a user name), the values of query keys that look like secrets (``password``,
    ``token``, ``key`` ...) as ``***``, a port that is not a number as ``***``.

    It does not trust ``urlsplit``: a password with an unencoded ``#``, ``/``, ``?`` or
    ``[`` cuts a URL in the wrong place there (redis-py then reads part of the password as
    the port), so the user info runs here to the last ``@``, wherever it is."""
    try:
        scheme, sep, rest = url.partition("://")
        if not sep:
            return _redacted_query(url)
        at = rest.rfind("@")
        userinfo, hostpart = (rest[:at], rest[at + 1:]) if at >= 0 else (None, rest)
        cut = min((i for i in (hostpart.find(c) for c in "/?#") if i >= 0), default=len(hostpart))
        authority, tail = hostpart[:cut], hostpart[cut:]
        shown = f"{scheme}://"
        if userinfo is not None:
            user, colon, _ = userinfo.partition(":")
            shown += f"{user}:***@" if colon else "***@"  # no colon: it may be the password
        # A Redis Cluster URL lists several nodes: host:port,host:port.
        shown += ",".join(_redacted_node(node) for node in authority.split(","))
        return shown + _redacted_query(tail)
    except Exception:
        return _UNPARSABLE


def _redacted_node(authority: str) -> str:
    """``host:port`` with a port that is not a number as ``***``."""
    if authority.startswith("["):  # an IPv6 address
        close = authority.find("]")
        host, port = (authority[:close + 1], authority[close + 1:].removeprefix(":")) if (
            close >= 0) else (authority, "")
    else:
        host, _, port = authority.partition(":")
    return host + (f":{port if port.isdigit() else '***'}" if port else "")


def _redacted_query(text: str) -> str:
    """A path, query and fragment with the values of its secret query keys as ``***``
    (a value runs to the next ``&``: an unencoded ``#`` does not end it); a fragment of
    the path (a URL has none of use here) is shown as ``#***``."""
    path, qmark, query = text.partition("?")
    path, hashmark, _ = path.partition("#")
    if hashmark:
        path += "#***"
    if not qmark:
        return path
    items = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        items.append(f"{name}=***" if eq and _secret_key(name) else item)
    return f"{path}?" + "&".join(items)
