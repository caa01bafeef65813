"""What the service's tests share: the app served by a real uvicorn on 127.0.0.1 (a free
port) from a daemon thread, for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
import threading
import time

import uvicorn

from serving.app import listen, server_config


@contextlib.contextmanager
def serving(app):
    """``with serving(app) as url:`` -> ``http://127.0.0.1:<port>``; stops on exit."""
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app))   # as `python -m serving.app` configures it
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
