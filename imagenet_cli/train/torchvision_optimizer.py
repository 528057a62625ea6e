"""The optimizer state of a file from torchvision's classification reference, in this tool's parameter order.

torchvision's `set_weight_decay` groups parameters (norms, biases, embeddings) differently from this tool;
a resume re-indexes its optimizer buffers parameter by parameter, checking each buffer's shape.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import RunConfig
from ..core import models
from ..core.errors import UserError
from .optim import parameter_groups

if TYPE_CHECKING:
    from ..checkpoint import LoadedCheckpoint


# What torchvision's `utils.set_weight_decay` counts as a normalisation layer (its default `norm_classes`).
NORM_CLASSES = (
    nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)  # fmt: skip
# The parameter names train.py gives `--transformer-embedding-decay`.
EMBEDDING_KEYS = ("class_token", "position_embedding", "relative_position_bias_table")


def torchvision_layouts(model: nn.Module, recipe: Mapping[str, Any]) -> list[list[list[nn.Parameter]]]:
    """The optimizer groups torchvision's train.py made for `model` from its `args`, each a list of parameters
    in that optimizer's order: the one `set_weight_decay` makes (torchvision 0.13 on: "other", "norm", then
    the custom keys, empty groups left out), and for a file of torchvision 0.12 (its `args` have no
    `bias_weight_decay`), whose `split_normalization_params` put the norm group first, that one too. Its
    state is indexed by position in these groups, so nothing else tells which parameter a buffer belongs to."""
    keys = (["bias"] if recipe.get("bias_weight_decay") is not None else []) + (
        list(EMBEDDING_KEYS) if recipe.get("transformer_embedding_decay") is not None else []
    )
    split_norms = recipe.get("norm_weight_decay") is not None
    groups: dict[str, list[nn.Parameter]] = {"other": [], "norm": [], **{key: [] for key in keys}}
    _sort_into(model, keys, split_norms, groups)
    layouts = [[params for params in groups.values() if params]]
    if split_norms and "bias_weight_decay" not in recipe:
        layouts.append([params for params in (groups["norm"], groups["other"]) if params])
    return layouts


def _sort_into(module: nn.Module, keys: list[str], split_norms: bool, groups: dict[str, list[nn.Parameter]]) -> None:
    """set_weight_decay's walk: a module's own parameters, then its children's, depth first. A custom key
    takes a parameter whose own name equals it (train.py's keys have no dot, so never the dotted path),
    before the norm group does; parameters without gradients were never given to the optimizer."""
    for name, param in module.named_parameters(recurse=False):
        if not param.requires_grad:
            continue
        key = next((k for k in keys if k == name), None)
        if key is None:
            key = "norm" if split_norms and isinstance(module, NORM_CLASSES) else "other"
        groups[key].append(param)
    for child in module.children():
        _sort_into(child, keys, split_norms, groups)


def regroup_optimizer_state(
    state: Mapping[str, Any],
    recipe: Mapping[str, Any],
    model: nn.Module,
    our_groups: list[list[nn.Parameter]],
    source: str,
) -> Mapping[str, Any]:
    """torchvision's optimizer state re-indexed for an optimizer whose groups hold `our_groups` (parameters
    of `model`): each stored buffer goes to the same parameter, whatever group either program put it in.
    Every buffer must have its parameter's shape (a one-line error, not a crash at the first step). A
    state already in our order is returned untouched; otherwise its groups are ours, with no settings:
    `optim.restore` sets this run's."""
    saved = [list(group.get("params", [])) for group in state.get("param_groups") or []]
    layout = _matching_layout(saved, torchvision_layouts(model, recipe), source)
    stored = {
        old: param for olds, params in zip(saved, layout, strict=True) for old, param in zip(olds, params, strict=True)
    }
    _check_shapes(state.get("state") or {}, stored, model, source)
    ours = {id(param): index for index, param in enumerate(p for group in our_groups for p in group)}
    target = {old: ours[id(param)] for old, param in stored.items()}
    if all(old == new for old, new in target.items()) and [len(g) for g in saved] == [len(g) for g in our_groups]:
        return state
    bounds = [0, *itertools.accumulate(len(group) for group in our_groups)]
    return {
        "state": {target[old]: buffers for old, buffers in (state.get("state") or {}).items()},
        "param_groups": [{"params": list(range(start, end))} for start, end in itertools.pairwise(bounds)],
    }


def _matching_layout(
    saved: list[list[Any]], layouts: list[list[list[nn.Parameter]]], source: str
) -> list[list[nn.Parameter]]:
    """The layout whose group sizes are the stored ones."""
    sizes = [len(group) for group in saved]
    for layout in layouts:
        if [len(group) for group in layout] == sizes:
            return layout
    expected = [len(group) for group in layouts[0]]
    raise UserError(
        f"{source}: its optimizer has groups of {sizes} parameters, but torchvision's reference makes groups "
        f"of {expected} for this model with the file's recipe (`args`); it was not written by that program "
        "for these weights"
    )


def _check_shapes(state: Mapping[Any, Any], params: Mapping[Any, nn.Parameter], model: nn.Module, source: str) -> None:
    """Each stored buffer (momentum, moments; not the step count) has its parameter's shape."""
    names = {id(param): name for name, param in model.named_parameters()}
    for old, buffers in state.items():
        if old not in params:
            raise UserError(f"{source}: its optimizer state names parameter {old}, which none of its groups holds")
        param = params[old]
        for key, value in buffers.items():
            if key != "step" and isinstance(value, torch.Tensor) and value.shape != param.shape:
                raise UserError(
                    f"{source}: its optimizer's {key} for {names.get(id(param), old)} has shape {tuple(value.shape)}, "
                    f"the parameter {tuple(param.shape)}: the optimizer state does not belong to these weights"
                )


def resumed_optimizer_state(
    resumed: LoadedCheckpoint, optimizer: torch.optim.Optimizer, cfg: RunConfig
) -> Mapping[str, Any] | None:
    """The optimizer state a resume restores: a torchvision file's in this run's order, any other as it is.
    This run's optimizer holds the model's parameters but neither their names nor their layers, which
    torchvision's grouping needs; a skeleton of the same model (meta parameters: no memory) has both, and is
    grouped here as `build_optimizer` grouped the real one."""
    if resumed.recipe is None or resumed.optimizer is None:
        return resumed.optimizer
    arch = cfg.model.arch
    outputs = models.head_num_classes(arch, resumed.state_dict)
    if outputs is None:
        return resumed.optimizer
    with models.parameters_on_meta():
        skeleton = models.build_model(arch, outputs)
    ours = [group["params"] for group in parameter_groups(skeleton, arch, cfg.optim)]
    if [[p.shape for p in g] for g in ours] != [[p.shape for p in g["params"]] for g in optimizer.param_groups]:
        raise RuntimeError("the optimizer's groups are not those parameter_groups makes for this model")
    return regroup_optimizer_state(resumed.optimizer, resumed.recipe, skeleton, ours, resumed.path)
