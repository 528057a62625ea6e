"""Which network, and where its starting weights come from: the model options."""

from __future__ import annotations

from dataclasses import dataclass

from .options import MODEL, RUNS, check, option

_RECORDED = "Architecture, when the checkpoint does not record it."


@dataclass(frozen=True)
class ModelConfig:
    """Which network, and where its starting weights come from."""

    arch: str = option(
        "resnet18", "-a", "--arch", panel=MODEL, commands=RUNS | {"resume"},
        help="A torchvision classifier (resnet18; `imagenet-cli models`), timm/NAME (timm's, with the timm extra), or "
        "your own model: FILE.py:CALLABLE or package.module:CALLABLE (this runs that code).",
        variants={"evaluate": {"help": _RECORDED, "show_default": False},
                  "resume": {"help": _RECORDED, "show_default": False},
                  "finetune": {"help": "Architecture; taken from --weights when it records one.", "show_default": False}},
    )  # fmt: skip
    pretrained: bool = option(
        False, "--pretrained", panel=MODEL,
        help="Start from torchvision's weights for --arch, read from the local torch hub cache ($TORCH_HOME).",
    )  # fmt: skip
    trust_checkpoint_code: bool = option(
        False, "--trust-checkpoint-code", panel=MODEL, commands=frozenset({"evaluate", "resume", "finetune"}),
        recorded=False,
        help="Run the model code (FILE.py:CALLABLE) a checkpoint names without typing it as --arch, if that file is "
        "unchanged since (its sha256).",
    )  # fmt: skip
    weights: str | None = option(
        None, "--weights", filename=True, panel=MODEL, commands=frozenset({"finetune"}),
        help="Checkpoint or weights file to start from (any format evaluate accepts).",
    )  # fmt: skip

    def __post_init__(self) -> None:
        from ..core.model_sources import canonical
        from ..core.models import check_arch  # imports torchvision: only when a config is really built

        object.__setattr__(self, "arch", canonical(self.arch))  # a file's path made absolute, for every process
        check_arch(self.arch)
        check(not (self.pretrained and self.weights), "use either --pretrained or --weights, not both")
