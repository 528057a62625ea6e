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
        help="Any torchvision classification model (torchvision.models.list_models()).",
        variants={"evaluate": {"help": _RECORDED, "show_default": False},
                  "resume": {"help": _RECORDED, "show_default": False},
                  "finetune": {"help": "Architecture; taken from --weights when it records one.", "show_default": False}},
    )  # fmt: skip
    pretrained: bool = option(
        False, "--pretrained", panel=MODEL,
        help="Start from torchvision's weights for --arch, read from the local torch hub cache ($TORCH_HOME).",
    )  # fmt: skip
    weights: str | None = option(
        None, "--weights", filename=True, panel=MODEL, commands=frozenset({"finetune"}),
        help="Checkpoint or weights file to start from (any format evaluate accepts).",
    )  # fmt: skip

    def __post_init__(self) -> None:
        from ..core.models import check_arch  # imports torchvision: only when a config is really built

        check_arch(self.arch)
        check(not (self.pretrained and self.weights), "use either --pretrained or --weights, not both")
