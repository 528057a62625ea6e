"""Real servers on loopback for the remote-data tests: a static HTTP server (range requests, and faults
to order), and moto's S3 API in a thread of its own. Nothing here imitates a client: the tool's own
fsspec readers talk to these as they would to nginx or to S3."""

from __future__ import annotations

import http.server
import logging
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Faults:
    """What the server does wrong, once each, to the first GET of a file whose name matches: answer
    `status` instead, or send half of the bytes asked for and then drop the connection."""

    status: dict[str, int] = field(default_factory=dict)  # file name -> status to answer once
    drop: set[str] = field(default_factory=set)  # file names whose first GET is cut off half-way
    stall: dict[str, float] = field(default_factory=dict)  # file name -> seconds of silence mid-answer, once
    seen: Counter = field(default_factory=Counter)  # what was done: "503 val-000000.tar", "drop ..."
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, name: str) -> str | int | float | None:
        with self.lock:
            if name in self.status:
                status = self.status.pop(name)
                self.seen[f"{status} {name}"] += 1
                return status
            if name in self.drop:
                self.drop.discard(name)
                self.seen[f"drop {name}"] += 1
                return "drop"
            if name in self.stall:
                self.seen[f"stall {name}"] += 1
                return self.stall.pop(name)
        return None


def _handler(root: Path, faults: Faults, requests: Counter) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        """GET and HEAD of files under `root`, with single byte ranges (what fsspec asks for)."""

        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms wait between them

        def log_message(self, *_args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = root / self.path.split("?")[0].lstrip("/")
            if ".." in self.path or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start, end = 0, len(data)
            wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if wanted:
                start, end = int(wanted[1]), min(len(data), int(wanted[2]) + 1 if wanted[2] else len(data))
            fault = faults.take(path.name) if body else None
            if isinstance(fault, int):
                self.send_error(fault)
                return
            requests[path.name] += body
            self.send_response(206 if wanted else 200)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            if wanted:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if isinstance(fault, float):
                self.wfile.write(data[start : start + (end - start) // 2])
                self.wfile.flush()
                time.sleep(fault)
                fault = None
            if fault == "drop":
                self.wfile.write(data[start : start + (end - start) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(data[start:end])

    return Handler


@dataclass
class HttpStore:
    url: str
    faults: Faults
    requests: Counter  # whole GETs served, by file name


@contextmanager
def http_store(root: Path) -> Iterator[HttpStore]:
    """A threaded HTTP server on a free loopback port serving `root` (HTTP/1.1, keep-alive)."""
    faults, requests = Faults(), Counter()
    handler = _handler(root, faults, requests)
    handler.protocol_version = "HTTP/1.1"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpStore(f"http://127.0.0.1:{server.server_address[1]}", faults, requests)
    finally:
        server.shutdown()
        server.server_close()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-never-printed",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def s3_store() -> Iterator[dict[str, str]]:
    """moto's standalone S3 server on a free loopback port; yields the environment that points boto at it
    (AWS_ENDPOINT_URL_S3, as for MinIO or any S3-compatible store, and test credentials)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {**S3_ENV, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    finally:
        server.stop()


def env_with(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
