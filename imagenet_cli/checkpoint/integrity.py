"""Files that prove themselves whole: a sha256 written beside each one, verified before it is loaded,
and torch's own CRC-32s when a save was cut off between a file and its checksum."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from typing import Any

from ..core.atomicfile import atomic_write, sha256_of
from ..core.errors import UserError
from ..core.faults import SaveFault

CHECKSUM_SUFFIX = ".sha256"
_NO_SPACE_AFTER = 1 << 16  # bytes a `nospace` fault lets through first, so the writer is mid-file


class _Hashing:
    """A file wrapper that hashes what passes through it on the way to the disk (no second read), and
    keeps the OSError a write met: torch's writer reports it only as an internal assertion."""

    def __init__(self, f: Any, no_space: bool = False) -> None:
        self.f, self.sha, self.no_space = f, hashlib.sha256(), no_space
        self.written, self.error = 0, None

    def write(self, data: bytes) -> int:
        try:
            if self.no_space and self.written + len(data) > _NO_SPACE_AFTER:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            count = self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.sha.update(data)
        self.written += len(data)
        return count

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
        digest = wrapper.sha.hexdigest()

    atomic_write(path, hashed, fault.step)
    write_sidecar(path, digest, fault)
    return digest


def copy_with_checksum(source: str, path: str, digest: str, fault: SaveFault) -> None:
    """A copy of a file just written, with the same checksum file."""

    def copy(f: Any) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f)

    atomic_write(path, copy, fault.step)
    write_sidecar(path, digest, fault)


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
