"""`BackgroundServer`: an app served by uvicorn in a daemon thread (``quota-hooks demo
--serve``, and tests that need a real socket)."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """Serve ``app`` on ``host:port`` from a daemon thread until :meth:`stop`.

    ``port=0`` picks a free port; :attr:`port` is the one bound. Raises ``OSError`` naming the
    address when the server does not start within ``timeout`` seconds (a busy port, say).
    """

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0
    ) -> None:
        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off"
        ))
        self.thread = threading.Thread(target=self.server.run, name="quota-hooks-serve",
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not self.server.started:
            self.stop()
            raise OSError(f"the server on {host}:{port} did not start")
        self.port: int = port or self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and wait (up to 10 s) for the thread to end."""
        self.server.should_exit = True
        self.thread.join(10)
