"""Files written whole or not at all: checkpoints, config.json, pictures, exports.

No torch here, so light commands (`plot`) can use it without paying for the import.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

from .errors import UserError


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`.

    The rename is atomic on POSIX file systems, so readers see the old file or the new one, never half.
    The file gets the permissions an ordinary `open` would (the umask's), not the temporary file's 0600:
    a cluster's group must still be able to read a run's checkpoints."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise UserError(f"could not write {path}: {exc.strerror or exc}; the previous file is unchanged") from exc
        raise
    _fsync_dir(directory)


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
