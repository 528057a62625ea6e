"""The checkpoint file format: what goes in, how it reaches the disk whole, and how any file users bring
comes back (this tool's, the reference script's, torchvision's references', plain state dicts).

Everything is plain data loadable with `torch.load(..., weights_only=True)`: a checkpoint from a stranger
cannot run code on this machine.
"""

from .files import (
    BEST_NAME,
    CHECKPOINT_NAME,
    find_resumable,
    make_checkpoint,
    remake_epoch_copy,
    remove_stale_saves,
    save_checkpoint,
)
from .integrity import CHECKSUM_SUFFIX, verify_checksum
from .reading import LoadedCheckpoint, read_checkpoint
from .summary import describe

__all__ = [
    "BEST_NAME", "CHECKPOINT_NAME", "CHECKSUM_SUFFIX", "LoadedCheckpoint", "describe", "find_resumable",
    "make_checkpoint", "read_checkpoint", "remake_epoch_copy", "remove_stale_saves", "save_checkpoint",
    "verify_checksum",
]  # fmt: skip
