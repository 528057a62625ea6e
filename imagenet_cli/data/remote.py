"""Shards in object stores and behind HTTP (`s3://`, `gs://`, `https://`, any URL fsspec reads), as streams.

Why a layer over fsspec's files: a dropped connection, a 503 or a timeout part-way through a shard would
otherwise end a loader worker, and the epoch with it. Here every read asks for a byte range and a failed
one is asked again from the same offset after a pause that doubles, so no sample is skipped or read twice;
a permanent failure (no such object or bucket, access denied) is one line naming the URL. Each open shard
holds at most two chunks in memory: the one being read and the next, fetched in the background.
Credentials are whatever each store's library finds in the environment and its config files; messages
show URLs without user, password or query (`formats.shown`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import posixpath
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.errors import UserError, one_line
from ..core.formats import shown, url_scheme

T = TypeVar("T")
CHUNK = 4 << 20  # bytes per request; with the one fetched ahead, what an open shard holds in memory
TRIES = 7  # a failed read waits 0.25, 0.5, 1, 2, 4, 8 s before trying again: 15 s in all
FIRST_PAUSE = 0.25
READ_TIMEOUT = 60.0  # seconds a web server may stay silent mid-answer before the read is tried again
MAX_INDEX_BYTES = 64 << 20  # an index of a million shards is about 60 MB; a larger one is not ours
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}
EXTRAS |= {"http": "http", "https": "http"}
_STORE_LIBRARIES = ("aiohttp", "botocore", "aiobotocore", "s3fs", "gcsfs", "google", "azure", "adlfs", "urllib3")
_CREDENTIALS = re.compile(r"(\w+://)[^/@\s'\"]*@|(\w+://[^\s?'\"]*)\?[^\s'\"]*")


def join(root: str, name: str) -> str:
    """`name` inside the folder `root` names, before any query (a token that grants access to the folder)."""
    folder, mark, query = root.partition("?")
    return posixpath.join(folder.rstrip("/") + "/", name) + mark + query


def filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem for the URL's scheme and the path within it; a missing package names the extra
    that brings it."""
    import fsspec

    scheme = url_scheme(url) or "file"
    try:
        return fsspec.core.url_to_fs(url, **_options(scheme))
    except ImportError as exc:
        extra = EXTRAS.get(scheme)
        hint = f"pip install 'imagenet-cli[{extra}]'" if extra else f"the fsspec implementation for {scheme}://"
        raise UserError(f"{shown(url)}: reading {scheme}:// URLs needs {hint}") from exc
    except ValueError as exc:  # fsspec knows no such protocol
        raise UserError(f"{shown(url)}: no installed fsspec filesystem reads {scheme}:// URLs") from exc


def _options(scheme: str) -> dict[str, Any]:
    """aiohttp waits five minutes for a stalled server by default: a stall is a transient failure like
    another, retried after a minute. (The stores' own libraries have their own timeouts and retries.)"""
    if scheme not in ("http", "https"):
        return {}
    import aiohttp  # fsspec's HTTP filesystem needs it too: when it is missing, the caller names the extra

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=READ_TIMEOUT)}}


def retried(url: str, call: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, tried again after transient failures; the last failure, or a permanent one, as one line."""
    pause = FIRST_PAUSE
    for attempt in range(1, TRIES + 1):
        try:
            return call()
        except Exception as exc:
            if isinstance(exc, UserError) or not transient(exc) or attempt == TRIES:
                tried = f" (tried {attempt} times)" if attempt > 1 else ""
                raise UserError(f"{shown(url)}: {describe(exc)}{tried}") from exc
        sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")


def transient(exc: BaseException) -> bool:
    """Worth trying again: the network and the stores' own errors, except those that will not change (a
    missing object, a refusal, a 4xx other than timeouts and throttling). Anything else is a bug or bad
    data, and trying again would only delay the message."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = _status(exc)
    if status is not None:
        return status >= 500 or status in (408, 425, 429)
    library = type(exc).__module__.partition(".")[0]
    return isinstance(exc, (OSError, TimeoutError, ConnectionError)) or library in _STORE_LIBRARIES


def _status(exc: BaseException) -> int | None:
    """The HTTP status a failure carries: aiohttp's `status`, botocore's in its response."""
    for status in (getattr(exc, "status", None), getattr(exc, "status_code", None)):
        if isinstance(status, int):
            return status
    response = getattr(exc, "response", None)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None
    return status if isinstance(status, int) else None


def describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, PermissionError):
        return f"access denied ({_scrubbed(one_line(exc))}); check the store's credentials"
    status = _status(exc)
    if status is None:
        return _scrubbed(one_line(exc))
    response = getattr(exc, "response", None)
    reason = getattr(exc, "message", None) or (
        response.get("Error", {}).get("Message") if isinstance(response, dict) else ""
    )
    return f"HTTP {status} {_scrubbed(str(reason))}".rstrip()


def _scrubbed(text: str) -> str:
    return _CREDENTIALS.sub(lambda m: m.group(1) or f"{m.group(2)}?…", text)


def size(url: str) -> int:
    fs, path = filesystem(url)
    return int(retried(url, lambda: fs.size(path)))


def size_or_none(url: str) -> int | None:
    try:
        return size(url)
    except UserError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise


def read_small(url: str, limit: int = MAX_INDEX_BYTES) -> bytes:
    """A whole small object (an index), refused past `limit` bytes before any of it is read."""
    length = size(url)
    if length > limit:
        raise UserError(f"{shown(url)} has {length:,} bytes, more than an index of this tool can ({limit:,})")
    with RemoteFile(url, length) as f:
        return f.read(length)


class RemoteFile:
    """A remote file read front to back (what a tar shard needs): `read`, forward `seek`, `tell`."""

    def __init__(self, url: str, length: int | None = None) -> None:
        self.url = url
        self.size = size(url) if length is None else length
        self._fs, self._path = filesystem(url)
        self._handle: Any = None
        self._chunk, self._chunk_at, self._position = b"", 0, 0
        self._ahead: tuple[int, concurrent.futures.Future[bytes]] | None = None  # (offset, its chunk)
        self._fetcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-read-ahead")

    def __enter__(self) -> RemoteFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        self._position = min(self.size, max(0, offset + (self._position if whence == 1 else 0)))
        return self._position

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self.size - self._position))
        parts = []
        while n:
            if not 0 <= self._position - self._chunk_at < len(self._chunk):
                self._load()
            start = self._position - self._chunk_at
            part = self._chunk[start : start + n]
            parts.append(part)
            self._position += len(part)
            n -= len(part)
        return b"".join(parts)

    def _load(self) -> None:
        """The chunk holding the position: the one fetched ahead when it does, else fetched now; then the
        next one is asked for. One thread makes every request, so they never share the connection."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] <= self._position < ahead[0] + self._length(ahead[0]):
            self._chunk_at, self._chunk = ahead[0], ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].cancel()
            self._chunk_at = self._position
            self._chunk = self._fetcher.submit(self._fetch, self._position).result()
        following = self._chunk_at + len(self._chunk)
        if following < self.size:
            self._ahead = following, self._fetcher.submit(self._fetch, following)

    def _length(self, offset: int) -> int:
        return min(CHUNK, self.size - offset)

    def _fetch(self, offset: int) -> bytes:
        return retried(self.url, lambda: self._read_range(offset, self._length(offset)))

    def _read_range(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length); any failure drops the connection, and the next try opens anew."""
        try:
            if self._handle is None:
                # given the size, fsspec's file asks the store nothing before its first read (no HEAD)
                self._handle = self._fs.open(self._path, "rb", block_size=CHUNK, cache_type="none", size=self.size)
            self._handle.seek(offset)
            data = self._handle.read(length)
            if len(data) != length:
                raise ConnectionError(f"the object ended {len(data):,} bytes into a read of {length:,} at {offset:,}")
            return data
        except BaseException:
            self._drop_handle()
            raise

    def _drop_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(Exception):  # a connection already broken may fail to close
                handle.close()

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[1].cancel()
        self._fetcher.shutdown(wait=True, cancel_futures=True)
        self._drop_handle()
