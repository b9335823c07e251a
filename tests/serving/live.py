"""A real uvicorn server on 127.0.0.1 (a free port) in a background thread, for tests that need
HTTP on a socket: concurrent clients, limits at the transport, the browser."""

from __future__ import annotations

import threading
import time

import uvicorn


class LiveServer:
    """``with LiveServer(app) as server: server.url`` -> ``http://127.0.0.1:<port>``."""

    def __init__(self, app, timeout: float = 30.0) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on", timeout_keep_alive=5))
        self.timeout = timeout
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout)
