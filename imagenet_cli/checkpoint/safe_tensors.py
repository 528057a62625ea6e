"""`.safetensors` weights: this tool's exports, timm's and Hugging Face's files.

A safetensors file is a JSON header (names, dtypes, shapes, byte ranges, and string metadata) followed by
raw tensor bytes: reading one never runs code. The header is checked here before the package reads a byte
of data, so a file that claims more than it holds is refused by name in one line instead of asking for
the memory it claims. Class names, arch and preprocessing come from the metadata `export` writes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
from typing import Any

from ..config import INTERPOLATIONS
from ..core.errors import UserError

SUFFIX = ".safetensors"
KIND = "safetensors weights"
INSTALL = 'pip install safetensors (or pip install "imagenet-cli[safetensors]")'
MAX_HEADER = 100 << 20  # bytes: the safetensors package's own ceiling
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_SIDE = 4096  # pixels: a preprocessing size beyond any crop or resize this tool accepts


def is_safetensors(path: str) -> bool:
    """By name, or by content: an 8-byte little-endian header length that fits the file, then `{`."""
    if path.lower().endswith(SUFFIX):
        return True
    with open(path, "rb") as f:
        start = f.read(9)
    return len(start) == 9 and start[8:9] == b"{" and struct.unpack("<Q", start[:8])[0] <= os.path.getsize(path) - 8


def read_safetensors(path: str) -> dict[str, Any]:
    """The file as a checkpoint-like mapping (`state_dict` and what its metadata names), header bounded first."""
    metadata = _checked_header(path)
    if importlib.util.find_spec("safetensors") is None:
        raise UserError(f"{path} is a safetensors file; reading it needs the safetensors package: {INSTALL}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable safetensors file: {str(exc).strip()[:160]}") from exc
    if not tensors:
        raise UserError(f"{path} holds no tensors; not a weights file")
    return {"state_dict": tensors, **_described(path, metadata)}


def _checked_header(path: str) -> dict[str, str]:
    """The header's string metadata, after checking every tensor's byte range lies inside the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        start = f.read(8)
        length = struct.unpack("<Q", start)[0] if len(start) == 8 else -1
        if not 2 <= length <= min(MAX_HEADER, size - 8):
            raise UserError(
                f"{path} declares a {max(length, 0):,}-byte safetensors header in a {size:,}-byte file; refused"
            )
        try:
            header = json.loads(f.read(length))
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python's stack
            raise UserError(f"{path} is not a readable safetensors file: its header is not JSON") from exc
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a readable safetensors file: its header is not a table of tensors")
    data_bytes = size - 8 - length
    claimed = sum(
        _tensor_bytes(path, name, entry, data_bytes) for name, entry in header.items() if name != "__metadata__"
    )
    if claimed > data_bytes:
        raise UserError(
            f"{path} declares {claimed / 2**30:.1f} GiB of weights in a {size / 2**20:.1f} MiB file; refused"
        )
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UserError(f"{path} is not a readable safetensors file: its metadata is not text")
    return metadata


def _tensor_bytes(path: str, name: str, entry: Any, data_bytes: int) -> int:
    """The bytes one tensor's shape needs, which must be exactly the range it names inside the file."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        needed = math.prod(int(d) for d in shape) * DTYPE_BYTES[dtype]
        fits = all(int(d) >= 0 for d in shape) and 0 <= begin <= end <= data_bytes and end - begin == needed
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is not a readable safetensors file: tensor {name[:80]!r} is not described") from exc
    if not fits:
        raise UserError(
            f"{path} declares tensor {name[:80]!r} of shape {list(shape)[:8]} ({needed:,} bytes) outside or beyond "
            f"its {data_bytes:,} bytes of data; refused"
        )
    return needed


def _described(path: str, metadata: dict[str, str]) -> dict[str, Any]:
    """What `export` stores beside the weights (arch, class names, preprocessing); other writers' keys
    (timm's and Hugging Face's `format`) are ignored."""
    out: dict[str, Any] = {"kind": KIND}
    if metadata.get("arch"):
        out["arch"] = metadata["arch"]
    for key in ("class_names", "preprocessing"):
        if key in metadata:
            try:
                out[key] = json.loads(metadata[key])
            except (ValueError, RecursionError) as exc:
                raise UserError(f"{path} stores {key} that are not JSON; damaged?") from exc
    if "preprocessing" in out:
        out["preprocessing"] = checked_preprocessing(out["preprocessing"], path)
    return out


def checked_preprocessing(value: Any, path: str) -> dict[str, Any]:
    """resize, crop and interpolation a file names for its model, bounded as the command line's are."""
    sizes = [value.get(key) for key in ("resize", "crop")] if isinstance(value, dict) else [None]
    mode = value.get("interpolation", "bilinear") if isinstance(value, dict) else None
    if (
        not all(isinstance(s, int) and not isinstance(s, bool) and 8 <= s <= MAX_SIDE for s in sizes)
        or sizes[0] < sizes[1]
        or mode not in INTERPOLATIONS
    ):
        raise UserError(f"{path} stores a preprocessing that is not sizes in pixels and an interpolation; damaged?")
    return {"resize": sizes[0], "crop": sizes[1], "interpolation": mode}
