"""Text from files, made safe to show: class names, paths and labels come from checkpoints, folders and
manifests, and must show themselves, never act on the terminal. No rich, no torch: errors use it too."""

from __future__ import annotations

# Characters that act on a terminal instead of showing: C0 and C1 controls, DEL, and the Unicode
# bidirectional overrides that reorder what follows them. Each is shown as its escape (`\x1b`, `\u202e`).
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROLS.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})
_CONTROLS_BUT_LINES = {c: shown for c, shown in _CONTROLS.items() if chr(c) != "\n"}
CLIP = 80  # characters of a value from a file echoed in a one-line message


def printable(value: object, keep_lines: bool = False) -> str:
    """`value` as text that only shows itself: class names, paths and labels come from files (a checkpoint,
    a folder, a manifest), and an escape sequence in one must print as `\\x1b`, not recolour the terminal,
    retitle it or hide what follows. `keep_lines`: newlines stay (for messages of several lines)."""
    return str(value).translate(_CONTROLS_BUT_LINES if keep_lines else _CONTROLS)


def clip(value: object, limit: int = CLIP) -> str:
    """`printable`, cut to `limit` characters: a value echoed in a message is there to be recognised, and
    a field of a megabyte must not become a megabyte-long error line."""
    text = printable(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
