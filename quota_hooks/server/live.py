"""The live WebSocket feed: one shared reader per workspace, bounded sockets, bounded sends.

* :class:`ConnectionSlots` caps the sockets open at once per token and per workspace; the
  route closes a socket over a cap with :data:`WS_TOO_MANY` and a reason the page shows.
* :class:`LiveHub` keeps one :class:`_Feed` per (event loop, workspace): a single
  subscription to ``manager.events`` and a single status read per change (at most one per
  ``gap`` seconds, and one per ``poll`` seconds when quiet), whose frame is handed to every
  socket of that workspace. A tracked call therefore wakes one listener whatever the number of
  sockets, and the store is read once per update, not once per socket.
* Each socket has a :class:`_Mailbox`: the newest status frame (older ones are replaced,
  never queued) and at most ``max_pending`` alert frames. :func:`serve_socket` sends them; a
  send that does not complete within ``send_timeout`` seconds, or a backlog past
  ``max_pending``, closes the socket (:data:`WS_TOO_SLOW`): a client that stops reading holds
  neither a listener, nor a slot, nor a growing queue.
* A store that cannot be read reaches the socket as :data:`STORE_UNAVAILABLE` only; the
  details go to the ``quota_hooks`` log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import StorageError
from ..events import Subscription
from ..manager import QuotaManager

__all__ = [
    "STORE_UNAVAILABLE",
    "WS_TOO_MANY",
    "WS_TOO_SLOW",
    "ConnectionSlots",
    "LiveHub",
    "LiveSettings",
    "serve_socket",
]

logger = logging.getLogger("quota_hooks")
_K = TypeVar("_K")

#: The one thing a client learns about a store that fails (REST and WebSocket alike).
STORE_UNAVAILABLE = "the usage store is unavailable"
#: Close codes: over a socket cap; a client that does not read its updates in time.
WS_TOO_MANY, WS_TOO_SLOW = 4429, 4408
#: Frames as Starlette's ``send_json`` writes them.
_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)
_ERROR_FRAME = _dumps({"type": "quota_error", "data": STORE_UNAVAILABLE})
#: How long a socket being dropped may take to send its close frame.
_CLOSE_TIMEOUT = 1.0


@dataclass(frozen=True)
class LiveSettings:
    """How the live feed paces and bounds its sockets (see :func:`quota_router`)."""

    gap: float
    poll: float
    send_timeout: float
    max_pending: int


class ConnectionSlots:
    """Open sockets counted per token and per workspace, with caps. Thread-safe."""

    def __init__(self, per_token: int, per_workspace: int) -> None:
        self.per_token = per_token
        self.per_workspace = per_workspace
        self._tokens: Counter[str | None] = Counter()
        self._workspaces: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, token: str | None, workspace_id: str) -> Iterator[str | None]:
        """A slot for one socket while the block runs: yields None, or (over a cap, with no
        slot taken) the reason to close the socket with."""
        with self._lock:
            if self._tokens[token] >= self.per_token:
                refusal: str | None = "too many open dashboards for this token"
            elif self._workspaces[workspace_id] >= self.per_workspace:
                refusal = "too many open dashboards for this workspace"
            else:
                refusal = None
                self._tokens[token] += 1
                self._workspaces[workspace_id] += 1
        if refusal is not None:
            yield refusal
            return
        try:
            yield None
        finally:
            with self._lock:
                _release(self._tokens, token)
                _release(self._workspaces, workspace_id)


def _release(counter: Counter[_K], key: _K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]  # no key left behind per token or workspace ever seen


class _Backlog(Exception):
    """The socket's client does not read its updates fast enough."""


@dataclass(eq=False)
class _Mailbox:
    """What one socket has yet to send: the newest status frame, then queued alerts."""

    max_pending: int
    status: tuple[int, object, str] | None = None  # (read number, what it shows, frame)
    alerts: deque[str] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    scope: anyio.CancelScope | None = None  # the sender, cancelled by a backlog overflow
    sending: bool = False  # a frame is on its way (the client may not be reading)
    overflowed: bool = False
    failed: bool = False

    def offer_status(self, read: int, seen: object, frame: str) -> None:
        """Replace the pending status by a newer read (an older read is ignored)."""
        if self.status is None or read > self.status[0]:
            self.status = (read, seen, frame)
            self.wake.set()

    def offer_alert(self, frame: str) -> None:
        """Queue an alert. Past ``max_pending`` while a send is still on its way (a burst
        that finds the sender idle is sent at once) the socket is dropped."""
        if self.sending and len(self.alerts) >= self.max_pending:
            self.overflowed = True
            if self.scope is not None:
                self.scope.cancel()  # a send stuck on this socket ends now
        else:
            self.alerts.append(frame)
        self.wake.set()

    def fail(self) -> None:
        """The feed itself broke: the sender closes the socket."""
        self.failed = True
        self.wake.set()


class _Feed:
    """One workspace on one event loop: one subscription, one reader, many mailboxes."""

    def __init__(self, hub: LiveHub, key: tuple[asyncio.AbstractEventLoop, str]) -> None:
        self.hub = hub
        self.key = key
        self.workspace_id = key[1]
        self.members: set[_Mailbox] = set()
        self.reads = 0
        self.failing = False  # logged once per outage, not once per read
        self.subscription: Subscription = hub.manager.events.subscribe(
            frozenset({self.workspace_id}))
        self.task: asyncio.Task[None] | None = None

    def next_read(self) -> int:
        """A number for a status read about to start: later reads are never older."""
        self.reads += 1
        return self.reads

    async def read(self) -> tuple[int, object, str]:
        """Read the status now: (read number, what it shows, the frame to send)."""
        number = self.next_read()
        try:
            report = await self.hub.manager.astatus(self.workspace_id, enhanced=True)
        except StorageError:
            if not self.failing:  # the details are for the log, never for the socket
                self.failing = True
                logger.warning("quota-hooks: the live feed of %r cannot read the store",
                               self.workspace_id, exc_info=True)
            return number, _ERROR_FRAME, _ERROR_FRAME
        if self.failing:
            self.failing = False
            logger.info("quota-hooks: the live feed of %r reads the store again",
                        self.workspace_id)
        data = report.to_dict()
        seen = {k: v for k, v in data.items() if k != "updated_at"}
        return number, seen, _dumps({"type": "quota_update", "data": data})

    async def run(self) -> None:
        """Wait for changes (or ``poll``), read once, hand the frame to every mailbox."""
        settings = self.hub.settings
        last: object = None
        try:
            while True:
                _, alerts = await self.subscription.wait(timeout=settings.poll)
                for alert in alerts:
                    frame = _dumps({"type": "quota_alert", "data": alert.model_dump(mode="json")})
                    for member in tuple(self.members):
                        member.offer_alert(frame)
                number, seen, frame = await self.read()
                if seen != last:
                    last = seen
                    for member in tuple(self.members):
                        member.offer_status(number, seen, frame)
                await anyio.sleep(settings.poll if frame is _ERROR_FRAME else settings.gap)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("quota-hooks: the live feed of %r stopped", self.workspace_id)
            self.hub.stop(self)
            for member in tuple(self.members):
                member.fail()


class LiveHub:
    """The feeds of one router: created with their first socket, closed with their last."""

    def __init__(self, manager: QuotaManager, settings: LiveSettings) -> None:
        self.manager = manager
        self.settings = settings
        self._feeds: dict[tuple[asyncio.AbstractEventLoop, str], _Feed] = {}
        self._lock = threading.Lock()

    def join(self, workspace_id: str) -> tuple[_Feed, _Mailbox]:
        """A mailbox on the feed of ``workspace_id`` (started if needed) on this loop."""
        key = (asyncio.get_running_loop(), workspace_id)
        mailbox = _Mailbox(self.settings.max_pending)
        with self._lock:
            feed = self._feeds.get(key)
            if feed is None:
                feed = self._feeds[key] = _Feed(self, key)
                feed.task = key[0].create_task(feed.run(),
                                               name=f"quota-hooks feed {workspace_id!r}")
            feed.members.add(mailbox)
        return feed, mailbox

    def leave(self, feed: _Feed, mailbox: _Mailbox) -> None:
        """Remove ``mailbox``; the last one out stops the feed and its subscription."""
        with self._lock:
            feed.members.discard(mailbox)
            if feed.members:
                return
        self.stop(feed)

    def stop(self, feed: _Feed) -> None:
        """Stop ``feed``: its subscription ends, and the next socket starts a new one."""
        with self._lock:
            if self._feeds.get(feed.key) is feed:
                del self._feeds[feed.key]
        feed.subscription.close()
        if feed.task is not None and feed.task is not asyncio.current_task():
            feed.task.cancel()


async def serve_socket(hub: LiveHub, websocket: WebSocket, workspace_id: str) -> None:
    """Send ``workspace_id``'s snapshot, then its updates and alerts, until the client goes
    (or stops reading: then the socket is closed with :data:`WS_TOO_SLOW`)."""
    feed, mailbox = hub.join(workspace_id)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_until_disconnect, websocket, tasks.cancel_scope)
            # The client may go while a frame is being sent: then there is no one to tell.
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await _serve(websocket, feed, mailbox, hub.settings.send_timeout)
            tasks.cancel_scope.cancel()
    finally:
        hub.leave(feed, mailbox)


async def _until_disconnect(websocket: WebSocket, scope: anyio.CancelScope) -> None:
    """Read (and ignore) what the client sends; cancel ``scope`` once it has gone."""
    try:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass  # text, bytes: a client has nothing to say
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    scope.cancel()


async def _serve(websocket: WebSocket, feed: _Feed, mailbox: _Mailbox,
                 send_timeout: float) -> None:
    mailbox.offer_status(*await feed.read())  # the snapshot, read for this socket
    try:
        with anyio.CancelScope() as sender:
            mailbox.scope = sender
            await _send(websocket, mailbox, send_timeout)
        if mailbox.overflowed:
            raise _Backlog
    except (TimeoutError, _Backlog):
        code, reason = WS_TOO_SLOW, "updates were not read in time"
    else:
        code, reason = 1011, "the live feed stopped"  # _send returns only when it failed
    with anyio.move_on_after(_CLOSE_TIMEOUT):  # a client that does not read may not see it
        await websocket.close(code, reason)


async def _send(websocket: WebSocket, mailbox: _Mailbox, timeout: float) -> None:  # noqa: ASYNC109
    """Send what the mailbox holds as it comes: alerts first, then the newest status when
    it shows something the client has not seen. Each send gets ``timeout`` seconds."""
    shown: object = None
    sent = 0
    while not (mailbox.overflowed or mailbox.failed):
        await mailbox.wake.wait()
        mailbox.wake.clear()
        while mailbox.alerts and not mailbox.overflowed:
            await _send_text(websocket, mailbox, mailbox.alerts.popleft(), timeout)
        status, mailbox.status = mailbox.status, None
        if status is not None and status[0] > sent:
            sent = status[0]
            if status[1] != shown:
                shown = status[1]
                await _send_text(websocket, mailbox, status[2], timeout)


async def _send_text(websocket: WebSocket, mailbox: _Mailbox, frame: str,
                     timeout: float) -> None:  # noqa: ASYNC109
    mailbox.sending = True
    try:
        with anyio.fail_after(timeout):
            await websocket.send_text(frame)
    finally:
        mailbox.sending = False
