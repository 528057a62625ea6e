"""Layer-wise LR decay (`--layer-decay`), as BEiT, timm and the ViT/ConvNeXt finetuning recipes use it:
the head learns at the full LR and each block below it at `decay` times the one above.

Blocks are found by looking at the model, not by a table of names: a block is a member of a
`Sequential`/`ModuleList` whose members are all of one class (ViT's encoder layers, ConvNeXt's and Swin's
blocks in each stage, timm's `blocks`), the innermost such one around a parameter. Layer 0 is what comes
before the first block (the stem, position embeddings), blocks are 1..L in order, a parameter between
blocks (a downsampling layer) belongs to the block after it, and the head and what follows the last block
(the final norm) are layer L+1.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import nn


def _block_members(model: nn.Module) -> dict[str, nn.Module]:
    """Every module that is one of two or more same-class members of a Sequential or ModuleList."""
    members: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(module.named_children())
        if len(children) >= 2 and len({type(child) for _, child in children}) == 1:
            prefix = f"{name}." if name else ""
            members.update((prefix + child_name, child) for child_name, child in children)
    return members


def layer_ids(model: nn.Module, head: Collection[str]) -> tuple[dict[str, int], int]:
    """Each parameter's layer (0 .. L+1) and L+1, the head's layer."""
    members = _block_members(model)
    block_of: dict[str, str | None] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        prefixes = (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1))  # innermost first
        block_of[name] = next((p for p in prefixes if p in members and name not in head), None)
    order: dict[str, int] = {}
    for block in block_of.values():
        if block is not None and block not in order:
            order[block] = len(order) + 1
    top = len(order) + 1
    ids: dict[str, int] = {}
    pending: list[str] = []  # parameters waiting for the next block
    for name, block in block_of.items():
        if name in head:
            ids[name] = top
        elif block is None:
            pending.append(name)
        else:
            before_first = order[block] == 1
            ids.update((p, 0 if before_first else order[block]) for p in pending)
            pending.clear()
            ids[name] = order[block]
    ids.update((p, top if order else 0) for p in pending)
    return ids, top
