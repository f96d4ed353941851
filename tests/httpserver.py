"""A real HTTP server on 127.0.0.1 for the tests, serving a folder, with faults on demand.

    with ShardServer(folder) as srv:
        srv.fail("train-clean-100/x.tar", status=500, times=2)   # two 500s, then the file
        srv.drop("train-clean-100/x.tar", after=1000)            # cut the body after 1000 bytes, once
        srv.corrupt("train-clean-100/x.tar", offset=5000)        # one byte changed in transit, once
        srv.url                                                   # http://127.0.0.1:<port>
        srv.gets("train-clean-100/x.tar")                         # GET requests seen for that path
        srv.endless("train-clean-100/x.tar")                      # a body that never ends (no length)
        srv.announce("train-clean-100/x.tar", extra=2**30)        # Content-Length 1 GB over, then padding
        srv.drip("train-clean-100/x.tar", interval=0.5)           # one byte every 0.5 s
        srv.redirect("train-clean-100/x.tar", "http://127.0.0.1:1/x")
        srv.sent["train-clean-100/x.tar"]                         # body bytes written for that path
        srv.stop()                                                # the server gone (connections refused)

Faults are counted down per path (times=None: forever). Started and stopped by the test; a
ThreadingHTTPServer, so several ranks and loader workers can read at once. The hostile bodies
(endless, announce, drip) stop by themselves after HOSTILE_SECONDS or HOSTILE_BYTES, or when
the reader hangs up.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


HOSTILE_SECONDS = 60.0
HOSTILE_BYTES = 2**30          # an endless body ends here all the same (a reader without a bound then shows it)
PAD = b"\0" * 65536


class _Handler(SimpleHTTPRequestHandler):
    server_version = "phonerec-test"

    def log_message(self, format, *args):      # noqa: A002 - quiet
        pass

    def _rel(self) -> str:
        return unquote(urlsplit(self.path).path).lstrip("/")

    def do_GET(self):                           # noqa: N802
        srv: ShardServer = self.server.owner
        rel = self._rel()
        fault = srv._take(rel, "GET")
        if fault is None:
            return super().do_GET()
        kind, arg = fault
        if kind == "status":
            self.send_error(arg)
            return
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", arg)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = (Path(srv.folder) / rel).read_bytes()
        if kind in ("endless", "announce", "drip"):
            self._hostile(srv, rel, kind, arg, body)
            return
        if kind == "corrupt":
            body = bytearray(body)
            body[arg % len(body)] ^= 0xFF
            body = bytes(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "drop":                      # the promised length, then the connection closes
            self.wfile.write(body[:arg])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _hostile(self, srv, rel: str, kind: str, arg, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if kind == "announce":
            self.send_header("Content-Length", str(len(body) + arg))
        elif kind == "drip":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.close_connection = True
        end = time.monotonic() + HOSTILE_SECONDS
        chunks = iter([body[i:i + 1] for i in range(len(body))]) if kind == "drip" else None
        try:
            if kind != "drip":
                self._send(srv, rel, body)
            while time.monotonic() < end:
                if kind == "drip":
                    piece = next(chunks, b"")
                    if not piece:
                        return
                    self._send(srv, rel, piece)
                    time.sleep(arg)
                elif kind == "announce" and srv.sent[rel] >= len(body) + arg or srv.sent[rel] >= HOSTILE_BYTES:
                    return
                else:
                    self._send(srv, rel, PAD)
        except OSError:                         # the reader hung up
            return

    def _send(self, srv, rel: str, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        with srv._lock:
            srv.sent[rel] += len(data)

    def do_HEAD(self):                          # noqa: N802
        srv: ShardServer = self.server.owner
        fault = srv._take(self._rel(), "HEAD")
        if fault is not None and fault[0] == "status":
            self.send_error(fault[1])
            return
        return super().do_HEAD()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A reader that hangs up early (it refused an oversized body) is not an error to print."""
        import sys
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class ShardServer:
    def __init__(self, folder: str | Path):
        self.folder = str(folder)
        self._faults: dict[str, list] = {}
        self._lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()
        self.sent: collections.Counter = collections.Counter()
        handler = functools.partial(_Handler, directory=self.folder)
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # ---- faults
    def fail(self, rel: str, status: int = 500, times: int | None = 1, method: str = "GET") -> None:
        self._add(rel, method, "status", status, times)

    def drop(self, rel: str, after: int, times: int | None = 1) -> None:
        self._add(rel, "GET", "drop", after, times)

    def corrupt(self, rel: str, offset: int, times: int | None = 1) -> None:
        self._add(rel, "GET", "corrupt", offset, times)

    def endless(self, rel: str, times: int | None = None) -> None:
        self._add(rel, "GET", "endless", None, times)

    def announce(self, rel: str, extra: int, times: int | None = None) -> None:
        self._add(rel, "GET", "announce", extra, times)

    def drip(self, rel: str, interval: float, times: int | None = None) -> None:
        self._add(rel, "GET", "drip", interval, times)

    def redirect(self, rel: str, location: str, times: int | None = None) -> None:
        self._add(rel, "GET", "redirect", location, times)

    def _add(self, rel, method, kind, arg, times) -> None:
        with self._lock:
            self._faults.setdefault(rel, []).append([method, kind, arg, times])

    def _take(self, rel: str, method: str):
        with self._lock:
            self.requests[(method, rel)] += 1
            for f in self._faults.get(rel, []):
                if f[0] == method and (f[3] is None or f[3] > 0):
                    if f[3] is not None:
                        f[3] -= 1
                    return f[1], f[2]
        return None

    def gets(self, rel: str) -> int:
        return self.requests[("GET", rel)]

    # ---- life
    def start(self) -> ShardServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ShardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
