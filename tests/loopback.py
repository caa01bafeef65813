"""What the stand-in servers share: an HTTP server on 127.0.0.1 (a free port unless one is
given), served from a daemon thread for the length of a ``with`` block, and the command
line that serves one until Ctrl-C (``python -m tests.hub_server``,
``python -m tests.anilist_server``); and a server that never answers (an outage)."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HangingServer:
    """A server on 127.0.0.1 that accepts every connection and never answers (until
    closed): an outage as a client sees it, with no work of its own on the cores (a bare
    socket: an HTTP stand-in's parsing would hold the GIL of the process it runs in)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted, self._held = 0, []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:   # closed
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self._held:
            conn.close()


class LoopbackServer:
    """Base class: ``__enter__`` builds its handler class and returns ``self._serve(it)``.

    ``port`` (0: a free one, chosen by the OS) is where ``_serve`` listens."""

    port: int = 0

    def _serve(self, handler: type[BaseHTTPRequestHandler]):
        self._http = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
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


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 (a free one) to "
                                         f"65535 (got {text!r})")
    return value


def port_argument(parser: argparse.ArgumentParser, example: int) -> None:
    parser.add_argument("--port", type=_port, default=0,
                        help=f"port on 127.0.0.1, e.g. {example}; 0 picks a free one and "
                             "prints it (default: %(default)s)")


def serve_until_interrupted(server: LoopbackServer,
                            describe: Callable[[LoopbackServer], list[str]]) -> int:
    """Serves until Ctrl-C (or SIGTERM), after printing ``describe(server)``: the URL on
    the first line (scripts and tests read it there), then how to use it."""
    try:
        server.__enter__()
    except OSError as err:  # e.g. the port is taken
        print(f"error: cannot listen on 127.0.0.1:{server.port}: {err.strerror or err}",
              file=sys.stderr)
        return 2

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill PID` stops it as cleanly as Ctrl-C
    try:
        for line in describe(server):
            print(line, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print(f"stopped the stand-in server at {server.origin}", file=sys.stderr)
    finally:
        server.__exit__(None, None, None)
    return 0
