"""Files that prove themselves whole: a sha256 written beside each one, verified before it is loaded,
and torch's own CRC-32s when a save was cut off between a file and its checksum."""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import re
import shutil
import sys
import threading
import zipfile
from collections.abc import Callable
from typing import Any

from ..core.atomicfile import atomic_write, sha256_of
from ..core.errors import UserError
from ..core.faults import SaveFault

CHECKSUM_SUFFIX = ".sha256"
_NO_SPACE_AFTER = 1 << 16  # bytes a `nospace` fault lets through first, so the writer is mid-file
HASH_QUEUE = 4  # chunks (torch writes a tensor's bytes as one) waiting to be hashed: bounds the copies held


class _Hashing:
    """A file wrapper that hashes what passes through it on the way to the disk (no second read), and
    keeps the OSError a write met: torch's writer reports it only as an internal assertion. The hashing
    runs on a thread of its own (hashlib lets go of the GIL), beside the writer rather than after it: a
    checkpoint's sha256 costs about as much as writing it. At most HASH_QUEUE chunks wait for it."""

    def __init__(self, f: Any, no_space: bool = False) -> None:
        self.f, self.no_space = f, no_space
        self.written, self.error = 0, None
        self._sha = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(HASH_QUEUE)
        self._hasher = threading.Thread(target=self._hash, name="checkpoint-sha256", daemon=True)
        self._hasher.start()

    def write(self, data: bytes) -> int:
        try:
            if self.no_space and self.written + len(data) > _NO_SPACE_AFTER:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            count = self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self._chunks.put(bytes(data))  # a copy: the writer may reuse its buffer once this returns
        self.written += len(data)
        return count

    def hexdigest(self) -> str:
        """The sha256 of everything written; ends the hashing thread (call once, also after a failure)."""
        self._chunks.put(None)
        self._hasher.join()
        return self._sha.hexdigest()

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._sha.update(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def write_with_checksum(path: str, write: Callable[[Any], None], fault: SaveFault) -> str:
    """`atomic_write`, then the file's sha256 beside it (also atomically). Returns the digest."""
    digest = ""

    def hashed(f: Any) -> None:
        nonlocal digest
        wrapper = _Hashing(f, fault.no_space)
        try:
            write(wrapper)
        except Exception as exc:
            if wrapper.error is not None and wrapper.error is not exc:
                raise wrapper.error from exc  # the real cause: a full disk, not "enforce fail at ..."
            raise
        finally:
            digest = wrapper.hexdigest()

    atomic_write(path, hashed, fault.step)
    write_sidecar(path, digest, fault)
    return digest


def copy_with_checksum(source: str, path: str, digest: str, fault: SaveFault) -> None:
    """A copy of a file just written, with the same checksum file; copied by the kernel where it can."""

    def copy(f: Any) -> None:
        with open(source, "rb") as src:
            if not _copied_by_kernel(src.fileno(), f.fileno()):
                shutil.copyfileobj(src, f)

    atomic_write(path, copy, fault.step)
    write_sidecar(path, digest, fault)


def _copied_by_kernel(source: int, target: int) -> bool:
    """Copy a whole file between descriptors with sendfile (Linux), without passing it through Python;
    False when the platform or file system cannot, before anything was written."""
    if not sys.platform.startswith("linux"):
        return False
    size, offset = os.fstat(source).st_size, 0
    while offset < size:
        try:
            sent = os.sendfile(target, source, offset, size - offset)
        except OSError as exc:
            if offset == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                return False
            raise
        if sent == 0:
            raise OSError(errno.EIO, f"the copy ended at byte {offset} of {size}")
        offset += sent
    return True


def write_sidecar(path: str, digest: str, fault: SaveFault) -> None:
    line = f"{digest}  {os.path.basename(path)}\n"
    atomic_write(path + CHECKSUM_SUFFIX, lambda f: f.write(line.encode()), fault.step)


def verify_checksum(path: str) -> str | None:
    """Refuse a file whose content no longer matches the sha256 written beside it (a damaged disk, a copy
    cut short): loading it would give silently wrong weights. Files without one are not checked. A save cut
    off between renaming the file and its checksum leaves a whole file beside the previous file's checksum;
    so does an unreadable checksum file. Such a file is still taken when it proves itself whole (torch's
    archive keeps a CRC-32 of every record): the note returned says so."""
    sidecar = path + CHECKSUM_SUFFIX
    if not os.path.isfile(sidecar):
        return None
    expected = _read_digest(sidecar)
    if expected is not None and sha256_of(path) == expected:
        return None
    if _whole_archive(path):
        why = "cannot be read" if expected is None else "belongs to an earlier save (one cut off before its checksum)"
        return f"{os.path.basename(sidecar)} {why}; {path} itself is whole (every record matches its CRC-32)"
    raise UserError(
        f"{path} does not match its checksum in {os.path.basename(sidecar)}: the file is damaged; "
        "use an earlier checkpoint (`--resume auto` picks the newest intact one)"
    )


def _read_digest(sidecar: str) -> str | None:
    """The sha256 a `.sha256` file names, or None when it holds anything else (empty, not text, huge)."""
    with open(sidecar, "rb") as f:
        head = f.read(4096)
    try:
        words = head.decode("ascii").split()
    except UnicodeDecodeError:
        return None
    digest = words[0].lower() if words else ""
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _whole_archive(path: str) -> bool:
    """Whether a torch file's zip archive is complete and every record matches its CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError):
        return False
