"""Files written whole or not at all: checkpoints, config.json, pictures, exports.

No torch here, so light commands (`plot`) can use it without paying for the import.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from .errors import UserError

TMP_SUFFIX = ".tmp"
Steps = Callable[[str, str], None]  # (path, "written" | "renamed"): where a save stands, for fault tests


def _no_steps(_path: str, _point: str) -> None:
    return None


def atomic_write(
    path: str, write: Callable[[Any], None], on_step: Steps = _no_steps, verify: Callable[[str], None] | None = None
) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`: the rename is atomic
    on POSIX file systems, so readers see the old file or the new one, never half.
    The file gets the permissions an ordinary `open` would (the umask's), not the temporary file's 0600:
    a cluster's group must still be able to read a run's checkpoints. A failed write removes its temporary
    file; one left by a killed process is removed by `remove_stale_temporaries` at the next start.
    `verify` reads the whole temporary file before the rename: a file it refuses (by raising) is removed,
    so a file that fails its check is never seen under `path` (`export`'s round trip)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX, dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        on_step(path, "written")
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise UserError(_write_failure(path, exc)) from exc
        raise
    _fsync_dir(directory)
    on_step(path, "renamed")


def _write_failure(path: str, exc: OSError) -> str:
    """One line a user can act on; a full disk names the file system, not the writer's internals."""
    before = "the previous file is intact" if os.path.exists(path) else "nothing was written"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on {mount_point(os.path.dirname(os.path.abspath(path)))} writing {path}; {before}"
    return f"could not write {path}: {exc.strerror or exc}; {before}"


def mount_point(directory: str) -> str:
    """The file system a directory lives on, as `df` names it: where a full disk must be freed."""
    path = os.path.abspath(directory)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def remove_stale_temporaries(directory: str, name_patterns: Iterable[str]) -> list[str]:
    """Delete the temporary files `atomic_write` left in `directory` for the files whose names match
    `name_patterns` (regular expressions) when its process was killed mid-write (`.NAME.XXXXXXXX.tmp`):
    they are never whole, and can be as large as a checkpoint. Returns what was removed."""
    if not os.path.isdir(directory):
        return []
    names = "|".join(f"(?:{p})" for p in name_patterns)
    pattern = re.compile(rf"^\.(?:{names})\.[^./]+{re.escape(TMP_SUFFIX)}$")
    removed = []
    for entry in os.scandir(directory):
        if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed.append(entry.path)
    return removed


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable; not every platform can open a directory, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_of(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()
