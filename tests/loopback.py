"""What the stand-in servers share: an HTTP server on 127.0.0.1 (a free port), served
from a daemon thread for the length of a ``with`` block."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    """Base class: ``__enter__`` builds its handler class and returns ``self._serve(it)``."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]):
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._http.shutdown()
        self._http.server_close()

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``, no trailing slash."""
        host, port = self._http.server_address
        return f"http://{host}:{port}"
