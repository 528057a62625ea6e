"""How the weights learn: the reference recipe by default, and the parts of torchvision's and timm's
recipes (other optimizers, warmup and per-step schedules, label smoothing, mixup and cutmix, weight EMA,
gradient accumulation, transfer learning)."""

from __future__ import annotations

from dataclasses import dataclass

from .options import OPTIM, RECIPE, RESUMABLE, TRAINING, TRANSFER, check, check_choice, option

OPTIMIZERS = ("sgd", "nesterov", "adamw", "rmsprop")
SCHEDULES = ("step", "multistep", "cosine", "linear", "exponential", "constant", "plateau")
WARMUP_METHODS = ("linear", "constant")
BEST_BY = ("model", "ema")
MAX_EPOCHS = 100_000
# Finetuning starts from good weights: a short schedule and a small LR, as in torchvision's transfer
# learning tutorial, instead of the 90-epoch from-scratch recipe.
_SHORT = {"epochs": 10, "lr": 0.01, "batch_size": 32, "lr_step_size": 7}


def _finetune(name: str) -> dict[str, dict]:
    return {"defaults": {"finetune": _SHORT[name]}}


@dataclass(frozen=True)
class OptimConfig:
    """The reference recipe by default (SGD with momentum, LR divided by 10 every 30 epochs), and the
    parts of torchvision's and timm's recipes."""

    epochs: int = option(
        90, "--epochs", panel=OPTIM, commands=RESUMABLE, help="Total epochs to run.", **_finetune("epochs")
    )
    start_epoch: int = option(
        0, "--start-epoch", panel=OPTIM, commands=frozenset({"train"}),
        help="Epoch number to start at (useful on restarts).",
    )  # fmt: skip
    batch_size: int = option(
        256, "-b", "--batch-size", panel=OPTIM, commands=TRAINING | {"evaluate", "resume"}, **_finetune("batch_size"),
        help="Total batch over ALL processes of the run; each of N processes takes batch/N (a typed -b must divide; "
        "the default is rounded down to divide). Unlike the reference script, the same -b means the same "
        "optimisation on 1 GPU or 64.",
        variants={"evaluate": {"help": "Total batch over ALL processes; each of N processes takes about batch/N "
                               "(split as evenly as it goes: it changes no figure)."}},
    )  # fmt: skip
    batch_size_given: bool = True  # no flag: False when -b was not typed (a default, rounded at launch)
    opt: str = option(
        "sgd", "--opt", panel=RECIPE, choices=OPTIMIZERS,
        help="Optimizer: sgd, nesterov (SGD with Nesterov momentum), adamw, rmsprop.",
    )  # fmt: skip
    lr: float = option(
        0.1, "--lr", "--learning-rate", panel=OPTIM, commands=RESUMABLE, help="Initial learning rate.",
        **_finetune("lr"),
    )  # fmt: skip
    momentum: float = option(0.9, "--momentum", panel=OPTIM, help="SGD momentum.")
    weight_decay: float = option(1e-4, "--wd", "--weight-decay", panel=OPTIM, help="Weight decay.")
    lr_scheduler: str = option(
        "step", "--lr-scheduler", panel=RECIPE, choices=SCHEDULES,
        help="LR schedule, set every step: step (× --lr-gamma every --lr-step-size epochs), multistep (at "
        "--lr-milestones), cosine or linear (down to --lr-min), exponential (× --lr-gamma per epoch), constant.",
    )  # fmt: skip
    lr_step_size: int = option(
        30, "--lr-step-size", panel=OPTIM, help="Multiply the LR by --lr-gamma every this many epochs.",
        **_finetune("lr_step_size"),
    )  # fmt: skip
    lr_gamma: float = option(0.1, "--lr-gamma", panel=OPTIM, help="LR multiplier at each step of the schedule.")
    lr_milestones: str | None = option(
        None, "--lr-milestones", panel=RECIPE, show_default="none",
        help="multistep: the epochs at which to multiply by --lr-gamma, e.g. 30,60,80.",
    )  # fmt: skip
    plateau_patience: int = option(
        10, "--plateau-patience", panel=RECIPE,
        help="plateau: epochs without a better validation loss before the LR is cut (ReduceLROnPlateau's patience).",
    )  # fmt: skip
    plateau_factor: float = option(
        0.1, "--plateau-factor", panel=RECIPE, help="plateau: what the LR is multiplied by at each cut."
    )
    plateau_threshold: float = option(
        1e-4, "--plateau-threshold", panel=RECIPE,
        help="plateau: a loss counts as better when below the best × (1 - this) (torch's relative threshold).",
    )  # fmt: skip
    plateau_cooldown: int = option(
        0, "--plateau-cooldown", panel=RECIPE, help="plateau: epochs to wait after a cut before counting again."
    )
    layer_decay: float | None = option(
        None, "--layer-decay", panel=RECIPE, show_default="none",
        help="Layer-wise LR decay (ViT, ConvNeXt, Swin, timm's): the head at the LR, each block below at this × "
        "the one above (e.g. 0.75).",
    )  # fmt: skip
    lr_min: float = option(0.0, "--lr-min", panel=RECIPE, help="cosine: the LR the schedule ends at.")
    lr_warmup_epochs: float = option(
        0.0, "--lr-warmup-epochs", panel=RECIPE,
        help="Warm the LR up over this many epochs (fractions allowed); the schedule starts after.",
    )  # fmt: skip
    lr_warmup_method: str = option(
        "linear", "--lr-warmup-method", panel=RECIPE, choices=WARMUP_METHODS,
        help="Warmup: linear (from --lr-warmup-decay × LR up to the LR) or constant.",
    )  # fmt: skip
    lr_warmup_decay: float = option(
        0.01, "--lr-warmup-decay", panel=RECIPE, help="The fraction of the LR the warmup starts at."
    )
    label_smoothing: float = option(
        0.0, "--label-smoothing", panel=RECIPE, help="Label smoothing of the training loss (e.g. 0.1)."
    )
    mixup_alpha: float = option(
        0.0, "--mixup-alpha", panel=RECIPE,
        help="Mixup: blend batch pairs with a Beta(α, α) weight, on the device (0: off; e.g. 0.2).",
    )  # fmt: skip
    cutmix_alpha: float = option(
        0.0, "--cutmix-alpha", panel=RECIPE,
        help="CutMix: paste a box of another image, area from Beta(α, α) (0: off; e.g. 1.0). With mixup too, "
        "each batch gets one of the two.",
    )  # fmt: skip
    model_ema: bool = option(
        False, "--model-ema", panel=RECIPE,
        help="Keep a running average of the weights; validated and saved beside the model.",
    )  # fmt: skip
    model_ema_decay: float = option(
        0.999, "--model-ema-decay", panel=RECIPE, help="Weight of the old average at each EMA update."
    )
    model_ema_steps: int = option(32, "--model-ema-steps", panel=RECIPE, help="Optimizer steps between EMA updates.")
    model_ema_warmup_epochs: float = option(
        0.0, "--model-ema-warmup-epochs", panel=RECIPE,
        help="Until then the average just copies the weights (e.g. the LR warmup).",
    )  # fmt: skip
    best_by: str = option(
        "model", "--best-by", panel=RECIPE, choices=BEST_BY,
        help="Which top-1 picks model_best.pth.tar: model, or ema (with --model-ema).",
    )  # fmt: skip
    grad_accum_steps: int = option(
        1, "--grad-accum-steps", panel=RECIPE,
        help="Accumulate gradients over this many batches per optimizer step: the step sees -b × this many "
        "images (set --lr for that batch); only the last batch of each group is all-reduced.",
    )  # fmt: skip
    grad_clip: float | None = option(
        None, "--grad-clip", "--clip-grad-norm", panel=OPTIM, commands=RESUMABLE,
        help="Clip the norm of all gradients together to this (e.g. 1.0); a cure for loss spikes and NaNs.",
    )  # fmt: skip
    norm_weight_decay: float | None = option(
        None, "--norm-weight-decay", panel=OPTIM, show_default="--wd",
        help="Weight decay of normalisation layers (e.g. 0).",
    )  # fmt: skip
    bias_weight_decay: float | None = option(
        None, "--bias-weight-decay", panel=OPTIM, show_default="--wd", help="Weight decay of biases (e.g. 0)."
    )
    # Transfer learning: the backbone is everything but the classifier head.
    backbone_lr_mult: float = option(
        1.0, "--backbone-lr-mult", panel=TRANSFER, help="The backbone's LR as a fraction of the head's (0 freezes it)."
    )
    freeze_backbone: bool = option(
        False, "--freeze-backbone", panel=TRANSFER,
        help="Train only the classifier head; the backbone's BatchNorm statistics stay as loaded.",
    )  # fmt: skip
    unfreeze_at_epoch: int | None = option(
        None, "--unfreeze-at-epoch", panel=TRANSFER, help="Train the head alone until this epoch, then everything."
    )

    def __post_init__(self) -> None:
        check(self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")
        check(self.lr > 0, f"--lr must be positive, got {self.lr}")
        check(0 <= self.epochs <= MAX_EPOCHS, f"--epochs must be from 0 to {MAX_EPOCHS:,}, got {self.epochs}")
        check(self.start_epoch >= 0, f"--start-epoch must be 0 or more, got {self.start_epoch}")
        check(self.momentum >= 0, f"--momentum must be 0 or more, got {self.momentum}")
        check(self.weight_decay >= 0, f"--weight-decay must be 0 or more, got {self.weight_decay}")
        check(self.lr_step_size > 0, f"--lr-step-size must be positive, got {self.lr_step_size}")
        check(0 < self.lr_gamma <= 1, f"--lr-gamma must be in (0, 1], got {self.lr_gamma}")
        self._check_recipe()
        self.milestones()  # checks the list
        check(self.plateau_patience >= 0, f"--plateau-patience must be 0 or more, got {self.plateau_patience}")
        check(0 < self.plateau_factor < 1, f"--plateau-factor must be in (0, 1), got {self.plateau_factor}")
        check(0 <= self.plateau_threshold < 1, f"--plateau-threshold must be in [0, 1), got {self.plateau_threshold}")
        check(self.plateau_cooldown >= 0, f"--plateau-cooldown must be 0 or more, got {self.plateau_cooldown}")
        decay = self.layer_decay
        check(decay is None or 0 < decay <= 1, f"--layer-decay must be in (0, 1], got {decay}")
        check(self.grad_accum_steps >= 1, f"--grad-accum-steps must be at least 1, got {self.grad_accum_steps}")
        for flag, value in (
            ("--norm-weight-decay", self.norm_weight_decay),
            ("--bias-weight-decay", self.bias_weight_decay),
        ):
            check(value is None or value >= 0, f"{flag} must be 0 or more, got {value}")
        check(self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}")
        check(self.backbone_lr_mult >= 0, f"--backbone-lr-mult must be 0 or more, got {self.backbone_lr_mult}")
        check(
            self.unfreeze_at_epoch is None or self.unfreeze_at_epoch >= 0,
            f"--unfreeze-at-epoch must be 0 or more, got {self.unfreeze_at_epoch}",
        )

    def _check_recipe(self) -> None:
        check_choice("--opt", self.opt, OPTIMIZERS)
        check_choice("--lr-scheduler", self.lr_scheduler, SCHEDULES)
        check(
            self.lr_scheduler != "multistep" or bool(self.lr_milestones),
            "--lr-scheduler multistep needs --lr-milestones, e.g. 30,60,80",
        )
        check(0 <= self.lr_min < self.lr, f"--lr-min must be 0 or more and below --lr, got {self.lr_min}")
        check(self.lr_warmup_epochs >= 0, f"--lr-warmup-epochs must be 0 or more, got {self.lr_warmup_epochs}")
        check(
            self.lr_warmup_method in WARMUP_METHODS,
            f"--lr-warmup-method must be linear or constant, got {self.lr_warmup_method!r}",
        )
        check(0 < self.lr_warmup_decay <= 1, f"--lr-warmup-decay must be in (0, 1], got {self.lr_warmup_decay}")
        check(0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for flag, alpha in (("--mixup-alpha", self.mixup_alpha), ("--cutmix-alpha", self.cutmix_alpha)):
            check(alpha >= 0, f"{flag} must be 0 (off) or more, got {alpha}")
        check(0 < self.model_ema_decay < 1, f"--model-ema-decay must be in (0, 1), got {self.model_ema_decay}")
        check(self.model_ema_steps >= 1, f"--model-ema-steps must be at least 1, got {self.model_ema_steps}")
        check(self.model_ema_warmup_epochs >= 0, "--model-ema-warmup-epochs must be 0 or more")
        check(self.best_by in BEST_BY, f"--best-by must be model or ema, got {self.best_by!r}")
        check(self.best_by == "model" or self.model_ema, "--best-by ema needs --model-ema")

    def milestones(self) -> tuple[int, ...]:
        """--lr-milestones as epochs, increasing."""
        if not self.lr_milestones:
            return ()
        try:
            epochs = tuple(int(part) for part in str(self.lr_milestones).replace(" ", "").split(","))
        except ValueError:
            epochs = ()
        check(
            bool(epochs) and all(e > 0 for e in epochs) and list(epochs) == sorted(set(epochs)),
            f"--lr-milestones must be increasing positive epochs like 30,60,80, got {self.lr_milestones!r}",
        )
        return epochs
