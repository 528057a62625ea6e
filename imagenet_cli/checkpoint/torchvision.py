"""The recipe inside a checkpoint of torchvision's classification reference, as this tool's options.

torchvision's `references/classification/train.py` stores its whole `argparse` namespace as `args`. A
resume of such a file continues with that recipe where this tool has the same option (by another name,
or another unit: its `--batch-size` is per process, ours the total), and says which settings it took,
which have no equivalent here, and which it never takes from a file: where a run happens (paths,
addresses, devices) comes only from the command line.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import AUTO_AUGMENT_POLICIES, INTERPOLATIONS, WARMUP_METHODS, RunConfig
from ..core import models
from ..core.errors import UserError
from ..train.finetune import parameter_groups

if TYPE_CHECKING:
    from ..checkpoint import LoadedCheckpoint

# torchvision's name -> (our option, how its value becomes ours)
_SAME = lambda value, _args: value  # noqa: E731
_SCHEDULES = {"steplr": "step", "cosineannealinglr": "cosine", "exponentiallr": "exponential"}


def _one_of(choices: Collection[str]) -> Callable[[Any, Mapping[str, Any]], Any]:
    """A name this tool knows, or None (no equivalent here)."""
    return lambda value, _args: str(value).lower() if str(value).lower() in choices else None


def _batch(value: Any, args: Mapping[str, Any]) -> Any:
    """Per process there; the total over every process here."""
    return int(value) * max(1, int(args.get("world_size") or 1))


def _optimizer(value: Any, _args: Mapping[str, Any]) -> Any:
    name = str(value).lower()
    if name.startswith("sgd"):
        return "nesterov" if "nesterov" in name else "sgd"
    return name if name in ("adamw", "rmsprop") else None


def _ema_decay(value: Any, args: Mapping[str, Any]) -> Any:
    """torchvision scales its decay by how many updates a run makes (world size × batch × EMA steps /
    epochs); ours is the decay of one update, so the scaled value is the one to continue with."""
    adjust = max(1, int(args.get("world_size") or 1)) * int(args["batch_size"]) * int(args["model_ema_steps"])
    alpha = min(1.0, (1.0 - float(value)) * adjust / max(1, int(args["epochs"])))
    return 1.0 - alpha


def _ema_warmup(value: Any, args: Mapping[str, Any]) -> Any:
    """torchvision's average copies the weights during the LR warmup."""
    return float(value) if args.get("model_ema") else None


TRANSLATIONS: dict[str, tuple[str, Callable[[Any, Mapping[str, Any]], Any]]] = {
    "model": ("arch", _SAME),
    "epochs": ("epochs", _SAME),
    "batch_size": ("batch_size", _batch),
    "opt": ("opt", _optimizer),
    "lr": ("lr", _SAME),
    "momentum": ("momentum", _SAME),
    "weight_decay": ("weight_decay", _SAME),
    "norm_weight_decay": ("norm_weight_decay", _SAME),
    "bias_weight_decay": ("bias_weight_decay", _SAME),
    "label_smoothing": ("label_smoothing", _SAME),
    "mixup_alpha": ("mixup_alpha", _SAME),
    "cutmix_alpha": ("cutmix_alpha", _SAME),
    "lr_scheduler": ("lr_scheduler", lambda value, _args: _SCHEDULES.get(str(value).lower())),
    "lr_step_size": ("lr_step_size", _SAME),
    "lr_gamma": ("lr_gamma", _SAME),
    "lr_min": ("lr_min", _SAME),
    "lr_warmup_epochs": ("lr_warmup_epochs", _SAME),
    "lr_warmup_method": ("lr_warmup_method", _one_of(WARMUP_METHODS)),
    "lr_warmup_decay": ("lr_warmup_decay", _SAME),
    "auto_augment": ("auto_augment", _one_of(AUTO_AUGMENT_POLICIES)),
    "ra_magnitude": ("ra_magnitude", _SAME),
    "augmix_severity": ("augmix_severity", _SAME),
    "random_erase": ("random_erase", _SAME),
    "interpolation": ("interpolation", _one_of(INTERPOLATIONS)),
    "train_crop_size": ("image_size", _SAME),
    "val_crop_size": ("val_crop_size", _SAME),
    "val_resize_size": ("val_resize_size", _SAME),
    "clip_grad_norm": ("grad_clip", _SAME),
    "model_ema": ("model_ema", _SAME),
    "model_ema_steps": ("model_ema_steps", _SAME),
    "model_ema_decay": ("model_ema_decay", _ema_decay),
    "sync_bn": ("sync_bn", _SAME),
    "print_freq": ("print_freq", _SAME),
}
# Where and how that run ran, never taken from a file; and bookkeeping that is not a setting.
NEVER_TAKEN = frozenset({
    "data_path", "output_dir", "resume", "device", "dist_url", "world_size", "rank", "gpu", "distributed",
    "dist_backend", "workers", "start_epoch", "test_only", "cache_dataset", "amp", "weights",
})  # fmt: skip
# `lr_warmup_epochs` also sets when the EMA starts averaging.
_ALSO = {"lr_warmup_epochs": ("model_ema_warmup_epochs", _ema_warmup)}


@dataclass
class Translation:
    """Options by this tool's names, and what the user should hear about the rest."""

    options: dict[str, Any] = field(default_factory=dict)
    taken: list[str] = field(default_factory=list)  # torchvision's names
    without_equivalent: list[str] = field(default_factory=list)
    not_taken: list[str] = field(default_factory=list)

    def lines(self, source: str) -> list[str]:
        """One line each: what came from the file, what has no equivalent here, what a file never sets."""
        out = [f"{source}: torchvision's recipe taken where this tool has the option: " + _listed(self.taken)]
        if self.without_equivalent:
            out.append(f"{source}: torchvision settings with no equivalent here: {_listed(self.without_equivalent)}")
        if self.not_taken:
            out.append(
                f"{source}: never taken from a file (where and how a run happens comes from this command line): "
                + _listed(self.not_taken)
            )
        return out


def translate(args: Mapping[str, Any]) -> Translation:
    """torchvision's `args` as this tool's options. Settings left at a value that means "off" there
    (None) are skipped quietly; values our options cannot hold are listed as having no equivalent."""
    result = Translation()
    for name in sorted(args):
        value = args[name]
        if name in NEVER_TAKEN:
            result.not_taken.append(name)
            continue
        if name not in TRANSLATIONS:
            if value not in (None, False, 0, 0.0, ""):
                result.without_equivalent.append(name)
            continue
        ours, convert = TRANSLATIONS[name]
        try:
            converted = convert(value, args) if value is not None else None
        except (KeyError, TypeError, ValueError):
            converted = None
        if converted is None:
            if value is not None:
                result.without_equivalent.append(f"{name}={value}")
            continue
        result.options[ours] = converted
        result.taken.append(name)
        if name in _ALSO:
            extra, convert_extra = _ALSO[name]
            if (also := convert_extra(value, args)) is not None:
                result.options[extra] = also
    return result


def _listed(names: list[str]) -> str:
    return ", ".join(names) if names else "nothing"


# ---- the optimizer state of a torchvision file, in this tool's parameter order -------------------------------

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
