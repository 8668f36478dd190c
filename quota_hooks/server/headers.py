"""Browser security headers of the dashboard and the API.

Every response of the router carries ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer`` and a Content-Security-Policy: the dashboard's allows scripts
and styles from the server only (no inline script, no ``eval``, no inline handler or style,
no HTML sinks: Trusted Types are required and none may be created), the API's allows nothing
at all. Both name the sites that may frame the page in ``frame-ancestors`` (none by default;
``frame_ancestors=`` or ``QUOTA_HOOKS_FRAME_ANCESTORS``).

:func:`secured_route_class` puts the headers on the responses and errors of the router's own
routes (for apps that mount it); :class:`SecurityHeadersMiddleware` on every response of an
app (what :func:`~quota_hooks.server.create_app` adds), FastAPI's validation errors and 404s
included.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigurationError

__all__ = [
    "FRAME_ANCESTORS_ENV",
    "BrowserHeaders",
    "SecurityHeadersMiddleware",
    "parse_frame_ancestors",
    "secured_route_class",
]

FRAME_ANCESTORS_ENV = "QUOTA_HOOKS_FRAME_ANCESTORS"

#: A host-source of CSP (``https://portal.example``, ``https://*.corp.example:8443/app/``,
#: ``portal.example``): no quote, comma, semicolon or space can hide in it.
_HOST_SOURCE = re.compile(
    r"(?:https?://)?(?:\*\.)?[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r"(?::(?:[0-9]{1,5}|\*))?(?:/[a-z0-9\-._~%!$&+=:@/]*)?",
    re.IGNORECASE,
)
_KEYWORDS = {"none": "'none'", "self": "'self'", "'none'": "'none'", "'self'": "'self'"}


def parse_frame_ancestors(value: str | Sequence[str] | None, *,
                          environ: Mapping[str, str] | None = None) -> str:
    """The ``frame-ancestors`` sources: ``'none'`` (the default), ``'self'`` and/or host
    sources such as ``https://portal.example``, space-separated (or a list).

    None reads ``QUOTA_HOOKS_FRAME_ANCESTORS``. ``self`` and ``none`` may be written without
    their quotes. Anything else (a ``;`` that would start another directive, a wildcard that
    lets every site frame the page, a scheme, ``'none'`` next to other sources) raises
    :class:`~quota_hooks.errors.ConfigurationError` naming the setting.
    """
    source = "frame_ancestors"
    if value is None:
        env = os.environ if environ is None else environ
        value = env.get(FRAME_ANCESTORS_ENV)
        if value is None:
            return "'none'"
        source = FRAME_ANCESTORS_ENV
    items = value.split() if isinstance(value, str) else [str(v).strip() for v in value]
    sources: list[str] = []
    for item in items:
        keyword = _KEYWORDS.get(item.lower())
        if keyword is not None:
            sources.append(keyword)
        elif _HOST_SOURCE.fullmatch(item):
            sources.append(item)
        else:
            raise ConfigurationError(
                f"{source}: {item!r} is not a site that may frame the dashboard: use 'self', "
                f"'none' or origins such as https://portal.example, separated by spaces"
            )
    if not sources:
        raise ConfigurationError(
            f"{source}: empty; use 'none' (no site may frame the dashboard), 'self' or origins"
        )
    if "'none'" in sources and len(sources) > 1:
        raise ConfigurationError(f"{source}: 'none' cannot be combined with other sources")
    return " ".join(dict.fromkeys(sources))


@dataclass(frozen=True)
class BrowserHeaders:
    """The headers of the two kinds of response: the dashboard (and its assets), the API."""

    page: Mapping[str, str]
    api: Mapping[str, str]

    @classmethod
    def build(cls, frame_ancestors: str) -> BrowserHeaders:
        """Headers whose CSP names ``frame_ancestors`` (as :func:`parse_frame_ancestors`
        returns it)."""
        common = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
        legacy = {"'none'": "DENY", "'self'": "SAMEORIGIN"}.get(frame_ancestors)
        if legacy is not None:  # for browsers without frame-ancestors
            common["X-Frame-Options"] = legacy
        tail = f"base-uri 'none'; form-action 'none'; frame-ancestors {frame_ancestors}"
        page = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self' ws: wss:; require-trusted-types-for 'script'; "
            f"trusted-types 'none'; {tail}"
        )
        return cls(
            page={**common, "Content-Security-Policy": page},
            api={**common, "Content-Security-Policy": f"default-src 'none'; {tail}"},
        )

    def for_content_type(self, content_type: str) -> Mapping[str, str]:
        """The page's headers for HTML, the API's for everything else."""
        return self.page if content_type.startswith("text/html") else self.api


def _add_missing(headers: Any, extra: Mapping[str, str]) -> None:
    for name, value in extra.items():
        if name not in headers:
            headers[name] = value


def secured_route_class(headers: BrowserHeaders) -> type[APIRoute]:
    """An :class:`~fastapi.routing.APIRoute` whose responses, and the HTTP errors its endpoint
    raises, carry ``headers`` (a header the endpoint set itself is kept)."""

    class SecuredRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def secured(request: Request) -> Response:
                try:
                    response = await handler(request)
                except StarletteHTTPException as exc:
                    exc.headers = {**headers.api, **(exc.headers or {})}
                    raise
                _add_missing(response.headers,
                             headers.for_content_type(response.headers.get("content-type", "")))
                return response

            return secured

    return SecuredRoute


class SecurityHeadersMiddleware:
    """Pure ASGI middleware: ``headers`` on every HTTP response that lacks them (404s and
    validation errors included); WebSockets pass through untouched."""

    def __init__(self, app: ASGIApp, headers: BrowserHeaders) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {name.lower() for name, _ in raw}
                content_type = next((v.decode("latin-1") for n, v in raw
                                     if n.lower() == b"content-type"), "")
                for name, value in self.headers.for_content_type(content_type).items():
                    if name.lower().encode("latin-1") not in present:
                        raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, receive, send_with_headers)
