"""A plain HTTP server on 127.0.0.1 for the benchmarks: Python's ``ThreadingHTTPServer`` +
``SimpleHTTPRequestHandler`` serving one folder from a background thread.

    with serve(shards_dir) as srv:
        mf.load(srv.url, "train-clean-100")       # http://127.0.0.1:<port>/train-clean-100/manifest.json
        srv.requests                              # Counter of (method, status) answered so far

A built shards folder already has the layout readers expect at a URL (``<split>/manifest.json``,
``<split>/<shard>.tar``); only ``index.json`` (which ``phonerec publish`` adds) is missing, and
readers need it only to list the splits, never for a split they name. The port is a free one the
system picks; the server is shut down when the block ends.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    server_version = "phonerec-bench"

    def log_message(self, format, *args):        # noqa: A002 - quiet: no line per request on stderr
        pass

    def log_request(self, code="-", size="-"):
        code = getattr(code, "value", code)          # an HTTPStatus, or what a caller passed
        with self.server.lock:
            self.server.requests[(self.command, code)] += 1


class Server:
    """The running server: its base URL and the requests it answered."""

    def __init__(self, folder: str | Path, host: str = "127.0.0.1"):
        self.folder = str(Path(folder).resolve())
        handler = functools.partial(_Handler, directory=self.folder)
        self._httpd = ThreadingHTTPServer((host, 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.lock = threading.Lock()
        self._httpd.requests = collections.Counter()
        self.host, self.port = host, self._httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="bench-httpserve", daemon=True)

    @property
    def requests(self) -> collections.Counter:
        with self._httpd.lock:
            return collections.Counter(self._httpd.requests)

    def start(self) -> Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()


@contextmanager
def serve(folder: str | Path, host: str = "127.0.0.1") -> Iterator[Server]:
    """Serve `folder` over HTTP on `host` (a free port) for the duration of the block."""
    srv = Server(folder, host).start()
    try:
        yield srv
    finally:
        srv.stop()
