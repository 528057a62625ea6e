"""The run's configuration: frozen, validated once, plain enough to live inside a checkpoint.

The CLI hands over only the flags the user actually typed (`given`); defaults live here, in one place.
That is what lets `resume` treat the stored configuration as the base and report exactly which values
a command line changed, instead of silently replacing them (the reference script's `--lr` on resume).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UserError
from .formats import FORMATS, lookup

COMMANDS = ("train", "evaluate", "finetune")
BACKENDS = ("nccl", "gloo", "mpi", "ucc", "xccl")
AMP_MODES = ("auto", "none", "bf16", "fp16")
OPTIMIZERS = ("sgd", "nesterov", "adamw", "rmsprop")
SCHEDULES = ("step", "multistep", "cosine", "linear", "exponential", "constant")
WARMUP_METHODS = ("linear", "constant")
FAKE_IMAGE_SIZE = 64  # small enough that `--fake-data` finishes in seconds on a laptop CPU
FAKE_NUM_CLASSES = 10
VAL_CROP_RATIO = 0.875  # 224 / 256, torchvision's and the reference's evaluation resize
AUTO_AUGMENT_POLICIES = ("ra", "ta_wide", "augmix", "imagenet")  # RandAugment, TrivialAugmentWide, AugMix, AutoAugment
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# Bounds on what a value may ask for, so that no file (a recipe, a stored configuration) can make the tool
# exhaust memory, processes or time: each is far beyond what a classifier is trained with.
MAX_SIDE = 2048  # training and validation crops, in pixels (a validation resize up to 1.25x that)
MAX_FAKE_SIDE = 1024  # --fake-data keeps a bank of noise patterns of this size per device
MAX_CLASSES = 100_000  # a model's outputs (ImageNet-21k has 21,841)
MAX_FAKE_IMAGES = 100_000_000
MAX_EPOCHS = 100_000
MAX_PREFETCH = 64
MAX_SHUFFLE_BUFFER = 100_000  # samples held per loader worker
WORKERS_PER_CORE = 4  # local processes of a CPU run
MAX_WORKERS = 256  # loader workers per process (a stored count is also kept only up to this machine's cores)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and the shapes they arrive in."""

    path: str | None = None  # the dataset root (DATA)
    fake: bool = False
    data_format: str = "auto"  # imagefolder, csv, torchvision, webdataset; auto: recognised from DATA
    dataset: str | None = None  # a torchvision dataset by name, read from DATA (--dataset cifar10)
    train_manifest: str | None = None  # CSV of path,label rows; default DATA/train.csv
    val_manifest: str | None = None  # default DATA/val.csv
    download: bool = False  # let torchvision download --dataset (never needed when the files are there)
    shuffle_buffer: int = 2000  # samples a sharded stream shuffles among
    workers: int | None = None  # None: the CPU cores available to each process
    image_size: int | None = None  # training crop; None: 224, a --dataset's own size, or 64 for fake data
    val_resize_size: int | None = None  # None: val_crop_size / 0.875 (no resize at a --dataset's own size)
    val_crop_size: int | None = None  # None: image_size
    num_classes: int | None = None  # fake data's class count; real data: taken from the data
    fake_train_images: int = 1000
    fake_val_images: int = 200
    prefetch_factor: int = 4  # batches each loader worker prepares ahead
    decode_on_device: bool = False  # JPEGs decoded by the training device (nvJPEG), not the loader workers
    skip_bad_images: bool = False  # an unreadable file: warn and use the next one (default: stop, naming it)
    max_bad_images: int = 100  # ... but stop past this many on a rank
    # Training augmentations, per sample in the loader workers after the crop and flip (validation never):
    auto_augment: str | None = None  # one of AUTO_AUGMENT_POLICIES; None: none
    ra_magnitude: int = 9  # RandAugment's magnitude, 0-30
    augmix_severity: int = 3  # AugMix's severity, 1-10
    random_erase: float = 0.0  # probability of erasing a rectangle (filled with the mean pixel); 0: off
    interpolation: str = "bilinear"  # of the training crop's and the validation resize

    def __post_init__(self) -> None:
        manifests = bool(self.train_manifest or self.val_manifest)
        _check(
            self.fake or bool(self.path) or manifests,
            "DATA is required (a directory with train/ and val/, CSV manifests, shards or a --dataset root), "
            "or use --fake-data",
        )
        _check(
            self.data_format in FORMATS, f"--data-format must be one of {', '.join(FORMATS)}, got {self.data_format!r}"
        )
        native = None
        if self.dataset:
            _check(
                self.data_format in ("auto", "torchvision"),
                f"--dataset reads a torchvision dataset; it cannot be combined with --data-format {self.data_format}",
            )
            native = lookup(self.dataset).native_size
            object.__setattr__(self, "data_format", "torchvision")
        _check(
            self.data_format != "torchvision" or bool(self.dataset), "--data-format torchvision needs --dataset NAME"
        )
        _check(
            self.workers is None or 0 <= self.workers <= MAX_WORKERS,
            f"--workers must be from 0 to {MAX_WORKERS}, got {self.workers}",
        )
        image_size = self.image_size or native or (FAKE_IMAGE_SIZE if self.fake else 224)
        crop = self.val_crop_size or image_size
        resize = self.val_resize_size or (crop if crop == native else round(crop / VAL_CROP_RATIO))
        num_classes = self.num_classes or (FAKE_NUM_CLASSES if self.fake else None)
        self._check_sizes(image_size, crop, resize)
        _check(
            num_classes is None or 2 <= num_classes <= MAX_CLASSES,
            f"--num-classes must be from 2 to {MAX_CLASSES:,}, got {num_classes}",
        )
        for flag, count in (
            ("--fake-train-images", self.fake_train_images),
            ("--fake-val-images", self.fake_val_images),
        ):
            _check(0 < count <= MAX_FAKE_IMAGES, f"{flag} must be from 1 to {MAX_FAKE_IMAGES:,}, got {count}")
        _check(
            1 <= self.prefetch_factor <= MAX_PREFETCH,
            f"--prefetch-factor must be from 1 to {MAX_PREFETCH}, got {self.prefetch_factor}",
        )
        _check(self.max_bad_images >= 0, f"--max-bad-images must be 0 or more, got {self.max_bad_images}")
        _check(
            0 <= self.shuffle_buffer <= MAX_SHUFFLE_BUFFER,
            f"--shuffle-buffer must be from 0 to {MAX_SHUFFLE_BUFFER:,}, got {self.shuffle_buffer}",
        )
        self._check_augmentation()
        object.__setattr__(self, "image_size", image_size)
        object.__setattr__(self, "val_crop_size", crop)
        object.__setattr__(self, "val_resize_size", resize)
        object.__setattr__(self, "num_classes", num_classes)

    def _check_sizes(self, image_size: int, crop: int, resize: int) -> None:
        largest = MAX_FAKE_SIDE if self.fake else MAX_SIDE
        for flag, value, most in (
            ("--image-size", image_size, largest),
            ("--val-crop-size", crop, largest),
            ("--val-resize-size", resize, largest * 5 // 4),
        ):
            _check(8 <= value <= most, f"{flag} must be from 8 to {most} pixels, got {value}")
        _check(resize >= crop, f"--val-resize-size ({resize}) must not be smaller than --val-crop-size ({crop})")

    @property
    def augmented(self) -> bool:
        """Whether training images get augmentations beyond the crop and flip."""
        return self.auto_augment is not None or self.random_erase > 0

    def for_evaluation(self) -> DataConfig:
        """These settings without the training augmentations: evaluating a checkpoint never augments, so
        its run's augmentations must not stop `evaluate --fake-data` or `--decode-on-device`."""
        return dataclasses.replace(self, auto_augment=None, random_erase=0.0)

    def _check_augmentation(self) -> None:
        """Values the transforms would reject deep inside a loader worker, and combinations where the
        augmentations could not run: refused here, in one line, before any process starts."""
        policies, modes = ", ".join(AUTO_AUGMENT_POLICIES), ", ".join(INTERPOLATIONS)
        _check(
            self.auto_augment is None or self.auto_augment in AUTO_AUGMENT_POLICIES,
            f"--auto-augment must be one of {policies}, got {self.auto_augment!r}",
        )
        _check(0 <= self.ra_magnitude <= 30, f"--ra-magnitude must be between 0 and 30, got {self.ra_magnitude}")
        _check(
            1 <= self.augmix_severity <= 10, f"--augmix-severity must be between 1 and 10, got {self.augmix_severity}"
        )
        _check(0 <= self.random_erase <= 1, f"--random-erase is a probability, from 0 to 1; got {self.random_erase}")
        _check(
            self.interpolation in INTERPOLATIONS, f"--interpolation must be one of {modes}, got {self.interpolation!r}"
        )
        _check(
            not (self.fake and self.augmented),
            "--fake-data images are made on the device and are not augmented; drop --auto-augment and --random-erase",
        )
        _check(
            not (self.decode_on_device and self.augmented),
            "--auto-augment and --random-erase run in the loader workers, but --decode-on-device crops on the "
            "device; use one or the other",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Which network, and where its starting weights come from."""

    arch: str = "resnet18"
    pretrained: bool = False  # torchvision's weights for `arch`, from the local torch hub cache
    weights: str | None = None  # a checkpoint or weights file to start from (finetune)

    def __post_init__(self) -> None:
        from .models import check_arch  # imports torchvision; only when a config is really built

        check_arch(self.arch)
        _check(not (self.pretrained and self.weights), "use either --pretrained or --weights, not both")


@dataclass(frozen=True)
class OptimConfig:
    """The reference recipe by default (SGD with momentum, LR divided by 10 every 30 epochs), and the
    parts of torchvision's and timm's recipes: other optimizers, warmup and cosine schedules set every
    step, label smoothing, mixup and cutmix, weight EMA, gradient accumulation."""

    epochs: int = 90
    start_epoch: int = 0
    batch_size: int = 256  # the total over all processes of the run, per optimizer step: × grad_accum_steps
    batch_size_given: bool = True  # False: a default, rounded down at launch to divide among the processes
    opt: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_scheduler: str = "step"
    lr_step_size: int = 30
    lr_gamma: float = 0.1
    lr_milestones: str | None = None  # multistep: epochs, comma-separated ("30,60,80")
    lr_min: float = 0.0  # cosine: the LR it ends at
    lr_warmup_epochs: float = 0.0
    lr_warmup_method: str = "linear"
    lr_warmup_decay: float = 0.01  # the warmup starts at this fraction of the LR
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # 0: off; with cutmix too, each batch gets one of the two
    cutmix_alpha: float = 0.0
    model_ema: bool = False
    model_ema_decay: float = 0.999  # per EMA update
    model_ema_steps: int = 32  # optimizer steps between EMA updates
    model_ema_warmup_epochs: float = 0.0  # the EMA copies the model until then
    best_by: str = "model"  # model_best.pth.tar: the best epoch by the model's top-1, or the EMA's
    grad_accum_steps: int = 1
    grad_clip: float | None = None  # max norm of all gradients together; None: no clipping
    norm_weight_decay: float | None = None  # None: --weight-decay
    bias_weight_decay: float | None = None  # None: --weight-decay
    # Transfer learning: the backbone is everything but the classifier head.
    backbone_lr_mult: float = 1.0  # 0 freezes it
    freeze_backbone: bool = False
    unfreeze_at_epoch: int | None = None  # frozen before this epoch, trained from it on

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")
        _check(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _check(0 <= self.epochs <= MAX_EPOCHS, f"--epochs must be from 0 to {MAX_EPOCHS:,}, got {self.epochs}")
        _check(self.start_epoch >= 0, f"--start-epoch must be 0 or more, got {self.start_epoch}")
        _check(self.momentum >= 0, f"--momentum must be 0 or more, got {self.momentum}")
        _check(self.weight_decay >= 0, f"--weight-decay must be 0 or more, got {self.weight_decay}")
        _check(self.lr_step_size > 0, f"--lr-step-size must be positive, got {self.lr_step_size}")
        _check(0 < self.lr_gamma <= 1, f"--lr-gamma must be in (0, 1], got {self.lr_gamma}")
        _check(self.opt in OPTIMIZERS, f"--opt must be one of {', '.join(OPTIMIZERS)}, got {self.opt!r}")
        _check(
            self.lr_scheduler in SCHEDULES,
            f"--lr-scheduler must be one of {', '.join(SCHEDULES)}, got {self.lr_scheduler!r}",
        )
        _check(
            self.lr_scheduler != "multistep" or bool(self.lr_milestones),
            "--lr-scheduler multistep needs --lr-milestones, e.g. 30,60,80",
        )
        self.milestones()  # checks the list
        _check(0 <= self.lr_min < self.lr, f"--lr-min must be 0 or more and below --lr, got {self.lr_min}")
        _check(self.lr_warmup_epochs >= 0, f"--lr-warmup-epochs must be 0 or more, got {self.lr_warmup_epochs}")
        _check(
            self.lr_warmup_method in WARMUP_METHODS,
            f"--lr-warmup-method must be linear or constant, got {self.lr_warmup_method!r}",
        )
        _check(0 < self.lr_warmup_decay <= 1, f"--lr-warmup-decay must be in (0, 1], got {self.lr_warmup_decay}")
        _check(0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for flag, alpha in (("--mixup-alpha", self.mixup_alpha), ("--cutmix-alpha", self.cutmix_alpha)):
            _check(alpha >= 0, f"{flag} must be 0 (off) or more, got {alpha}")
        _check(0 < self.model_ema_decay < 1, f"--model-ema-decay must be in (0, 1), got {self.model_ema_decay}")
        _check(self.model_ema_steps >= 1, f"--model-ema-steps must be at least 1, got {self.model_ema_steps}")
        _check(self.model_ema_warmup_epochs >= 0, "--model-ema-warmup-epochs must be 0 or more")
        _check(self.best_by in ("model", "ema"), f"--best-by must be model or ema, got {self.best_by!r}")
        _check(self.best_by == "model" or self.model_ema, "--best-by ema needs --model-ema")
        _check(self.grad_accum_steps >= 1, f"--grad-accum-steps must be at least 1, got {self.grad_accum_steps}")
        for flag, value in (
            ("--norm-weight-decay", self.norm_weight_decay),
            ("--bias-weight-decay", self.bias_weight_decay),
        ):
            _check(value is None or value >= 0, f"{flag} must be 0 or more, got {value}")
        _check(self.grad_clip is None or self.grad_clip > 0, f"--grad-clip must be positive, got {self.grad_clip}")
        _check(self.backbone_lr_mult >= 0, f"--backbone-lr-mult must be 0 or more, got {self.backbone_lr_mult}")
        _check(
            self.unfreeze_at_epoch is None or self.unfreeze_at_epoch >= 0,
            f"--unfreeze-at-epoch must be 0 or more, got {self.unfreeze_at_epoch}",
        )

    def milestones(self) -> tuple[int, ...]:
        """--lr-milestones as epochs, increasing."""
        if not self.lr_milestones:
            return ()
        try:
            epochs = tuple(int(part) for part in str(self.lr_milestones).replace(" ", "").split(","))
        except ValueError:
            epochs = ()
        _check(
            bool(epochs) and all(e > 0 for e in epochs) and list(epochs) == sorted(set(epochs)),
            f"--lr-milestones must be increasing positive epochs like 30,60,80, got {self.lr_milestones!r}",
        )
        return epochs


@dataclass(frozen=True)
class ComputeConfig:
    """How the model runs on its device. The defaults are the fast settings that are safe there."""

    amp: str = "auto"  # auto: bf16 on CUDA GPUs that have it, fp16 on older ones, none elsewhere
    channels_last: bool | None = None  # None: on for convolutional models (CUDA and CPU)
    compile: bool = False

    def __post_init__(self) -> None:
        _check(self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")


@dataclass(frozen=True)
class SaveConfig:
    """Checkpoints beyond the one written after every epoch."""

    save_every_steps: int | None = None  # also save inside an epoch, every N steps
    save_every_minutes: float | None = None  # ... or every M minutes (rank 0's clock)
    keep_epochs: int | None = None  # also keep checkpoint_epoch_NNN.pth.tar of the last K epochs

    def __post_init__(self) -> None:
        for flag, value in (
            ("--save-every-steps", self.save_every_steps),
            ("--save-every-minutes", self.save_every_minutes),
            ("--keep-epochs", self.keep_epochs),
        ):
            _check(value is None or value > 0, f"{flag} must be positive, got {value}")


@dataclass(frozen=True)
class DistConfig:
    """How many processes, where, and how they meet. Flags keep the reference script's meaning:
    with --multiprocessing-distributed, `world_size` and `rank` count *nodes*; without it, processes."""

    world_size: int = 1
    rank: int = 0
    dist_url: str | None = None
    dist_backend: str | None = None  # None: NCCL on CUDA, Gloo otherwise
    multiprocessing_distributed: bool = False
    nproc_per_node: int | None = None  # None: one per GPU, or 1 without GPUs
    gpu: int | None = None
    no_accel: bool = False
    data_parallel: bool = False
    dist_timeout: float = 600.0  # seconds: joining the run, and any one collective
    sync_bn: bool = False  # BatchNorm statistics over the whole batch of all GPUs, not each GPU's share

    def __post_init__(self) -> None:
        _check(self.dist_timeout > 0, f"--dist-timeout must be positive, got {self.dist_timeout}")
        _check(self.world_size >= 1, f"--world-size must be at least 1, got {self.world_size}")
        _check(
            0 <= self.rank < self.world_size,
            f"--rank {self.rank} is out of range for --world-size {self.world_size} (ranks are 0..{self.world_size - 1})",
        )
        _check(
            self.nproc_per_node is None or self.nproc_per_node >= 1,
            f"--nproc-per-node must be at least 1, got {self.nproc_per_node}",
        )
        _check(
            self.dist_backend is None or self.dist_backend in BACKENDS,
            f"--dist-backend must be one of {', '.join(BACKENDS)}, got {self.dist_backend!r}",
        )
        _check(
            self.dist_url is None or "://" in self.dist_url,
            f"--dist-url must look like tcp://HOST:PORT or env://, got {self.dist_url!r}",
        )
        _check(self.gpu is None or self.gpu >= 0, f"--gpu must be 0 or more, got {self.gpu}")
        _check(
            not (self.data_parallel and self.multiprocessing_distributed),
            "--data-parallel is the single-process mode; it cannot be combined with --multiprocessing-distributed",
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; the one object that crosses process boundaries."""

    command: str = "train"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    output_dir: str = "."
    print_freq: int = 10
    seed: int | None = None
    resume: str | None = None  # a checkpoint whose training state this run continues
    evaluate_only: bool = False  # the reference's -e: validate and exit
    checkpoint: str | None = None  # `evaluate`: the checkpoint under test
    ema: bool = False  # `evaluate --ema`: score the checkpoint's weight average instead of its weights
    confusion_plot: str | None = None  # `evaluate --plot`: a PNG of the confusion matrix
    json: bool = False
    quiet: bool = False
    verbose: bool = False
    debug: bool = False
    log_dir: str | None = None  # every rank's own log, workerlog.RANK, for debugging distributed runs
    tensorboard: bool = False  # scalars in OUTPUT_DIR/tensorboard

    def __post_init__(self) -> None:
        _check(self.command in COMMANDS, f"unknown command {self.command!r}")
        _check(self.print_freq >= 1, f"--print-freq must be at least 1, got {self.print_freq}")
        _check(not (self.quiet and self.verbose), "--quiet and --verbose contradict each other; give one")
        _check(
            not self.tensorboard or importlib.util.find_spec("tensorboard") is not None,
            '--tensorboard needs the tensorboard package: pip install "imagenet-cli[tensorboard]" '
            "(or leave --tensorboard out; metrics.jsonl has the same figures)",
        )
        _check(
            self.command != "finetune" or bool(self.model.weights or self.model.pretrained),
            "finetune needs a starting point: --weights PATH or --pretrained",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of str/int/float/bool/None, safe for `torch.load(weights_only=True)`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Rebuild a stored configuration; keys this version does not know are dropped, so
        checkpoints from older or newer versions still resume."""
        sections = {name: section for name, section in _SECTIONS.items() if isinstance(raw.get(name), dict)}
        kwargs: dict[str, Any] = {name: section(**_known(section, raw[name])) for name, section in sections.items()}
        kwargs.update(_known(cls, {k: v for k, v in raw.items() if k not in _SECTIONS}))
        return cls(**kwargs)

    def as_recipe(self) -> RunConfig:
        """A stored configuration as a recipe: what to train, without where that run happened (addresses,
        ranks, GPUs, output and log directories) or what one command line asked (evaluate only, a plot to
        draw, a download...). It is data, and must not make a resume connect to an address, write to a
        folder or do something else than train. Process and worker counts stay when this machine has a
        core for each."""
        cores = os.cpu_count() or 1
        nproc = self.dist.nproc_per_node if (self.dist.nproc_per_node or 0) <= cores else None
        dist = dataclasses.replace(
            self.dist, world_size=1, rank=0, dist_url=None, dist_backend=None, gpu=None, nproc_per_node=nproc
        )
        workers = self.data.workers if (self.data.workers or 0) <= cores else None
        data = dataclasses.replace(self.data, download=False, workers=workers)
        one_command_line = {f.name: f.default for f in fields(RunConfig) if f.name in INVOCATION_ONLY}
        command = self.command if self.command in ("train", "finetune") else "train"
        return dataclasses.replace(
            self, command=command, data=data, dist=dist, output_dir=".", log_dir=None, **one_command_line
        )

    def placement(self) -> dict[str, Any]:
        """The settings of where a run happened, where they differ from the defaults."""
        plain = self.flat()
        return {k: plain[k] for k in sorted(PLACEMENT) if plain[k] != default_for("train", k)}

    def flat(self) -> dict[str, Any]:
        """Every option by its flag-style name, the inverse of `build_config`'s input."""
        out = {k: getattr(self, k) for k in _TOP_FIELDS}
        for name in _SECTIONS:
            out.update(dataclasses.asdict(getattr(self, name)))
        return out


# Built in this order: the model section last, since checking an arch name imports torchvision (seconds),
# and a bad number should be reported before that.
_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "optim": OptimConfig,
    "dist": DistConfig,
    "compute": ComputeConfig,
    "save": SaveConfig,
    "model": ModelConfig,
}
_TOP_FIELDS = tuple(f.name for f in fields(RunConfig) if f.name not in _SECTIONS)
OPTION_NAMES = frozenset(_TOP_FIELDS).union(*({f.name for f in fields(s)} for s in _SECTIONS.values()))

# Options whose flag is not their configuration name with dashes (DATA is also --data).
FILE_KEYS = {"path": "data", "fake": "fake-data", "evaluate_only": "evaluate"}
# Options of one invocation, not of a run, and batch_size_given (no flag sets it: -b typed or not; checkpoints
# keep it): never recorded in config.json, refused in a recipe file.
INVOCATION_ONLY = frozenset({"resume", "checkpoint", "confusion_plot", "evaluate_only", "json", "quiet", "verbose",
                             "debug", "batch_size_given", "ema", "download"})  # fmt: skip
# Where a run happens: only ever from this command line and this launcher's environment, never from a
# checkpoint's stored configuration (`RunConfig.as_recipe`).
PLACEMENT = frozenset({"output_dir", "log_dir", "world_size", "rank", "dist_url", "dist_backend", "gpu"})
# Nor recorded, nor taken from a recipe: where a run writes, and this node's place in it.
_NOT_RECORDED = INVOCATION_ONLY | PLACEMENT


def section_of(name: str) -> type:
    """The dataclass that declares option `name`."""
    for section in (RunConfig, *_SECTIONS.values()):
        if name in {f.name for f in fields(section)}:
            return section
    raise KeyError(name)


def type_problem(name: str, value: Any) -> str | None:
    """What an option's value must be when it is not (a value from a file: `lr = "0.1"`), else None."""
    hint = typing.get_type_hints(section_of(name))[name]
    allowed = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    if value is None and type(None) in allowed:
        return None
    allowed.discard(type(None))
    if float in allowed:
        allowed.add(int)
    if isinstance(value, tuple(allowed)) and (bool in allowed or not isinstance(value, bool)):
        return None
    kinds = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return " or ".join(sorted({kinds[t] for t in allowed if not (t is int and float in allowed)}))


def from_stored(raw: Any, source: str) -> RunConfig:
    """A configuration a checkpoint stores, checked as strictly as a command line: every section a table,
    every value of its option's type and in range. A problem names the file, not a flag nobody typed."""
    try:
        if not isinstance(raw, Mapping):
            raise UserError(f"it is a {type(raw).__name__}, not a table")
        values = {k: v for k, v in raw.items() if k not in _SECTIONS}
        for name in [n for n in _SECTIONS if n in raw]:
            if not isinstance(raw[name], Mapping):
                raise UserError(f"its {name} section is not a table")
            values.update(raw[name])
        for key, value in values.items():
            wanted = type_problem(key, value) if key in OPTION_NAMES else None
            if wanted:
                raise UserError(f"{key} must be {wanted}, got {str(value)[:40]!r}")
        return RunConfig.from_dict(dict(raw))
    except UserError as exc:
        raise UserError(f"{source}: its stored configuration is not valid here: {exc}") from exc
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise UserError(f"{source}: its stored configuration cannot be read ({exc})") from exc


def flag_values(cfg: RunConfig) -> dict[str, Any]:
    """Every option of the run by its flag name."""
    return {FILE_KEYS.get(k, k.replace("_", "-")): v for k, v in cfg.flat().items()}


def to_options(cfg: RunConfig) -> dict[str, Any]:
    """The run's options by flag name, as a `--config` file holds them (None: the default)."""
    hidden = {FILE_KEYS.get(k, k.replace("_", "-")) for k in _NOT_RECORDED}
    return {k: v for k, v in flag_values(cfg).items() if k not in hidden}


# Finetuning starts from good weights: a short schedule and a small LR, as in torchvision's transfer
# learning tutorial, instead of the 90-epoch from-scratch recipe.
FINETUNE_DEFAULTS: dict[str, Any] = {"epochs": 10, "lr": 0.01, "batch_size": 32, "lr_step_size": 7}


# Values resolved from another option: a new value of the option re-derives them.
_DERIVED = {
    "fake": ("image_size", "val_crop_size", "val_resize_size", "num_classes"),
    "dataset": ("image_size", "val_crop_size", "val_resize_size"),
    "image_size": ("val_crop_size", "val_resize_size"),
    "val_crop_size": ("val_resize_size",),
}


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def build_config(command: str, given: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Merge the flags a user typed over a base: the stored config on resume, else the defaults.

    Values derived from others (validation sizes from the image size) are re-derived unless given,
    so the stored, resolved values of a base do not pin them."""
    unknown = set(given) - OPTION_NAMES
    if unknown:
        raise ValueError(f"unknown option names: {sorted(unknown)}")
    flat = base.flat() if base is not None else {"command": command, **_command_defaults(command)}
    for name in [n for n in given if flat.get(n) != given[n]]:
        for derived in _DERIVED.get(name, ()):
            if derived not in given:
                flat[derived] = None
    flat.update(given)
    if "batch_size_given" not in given:  # typed now, or by the run this one continues
        flat["batch_size_given"] = "batch_size" in given or (base is not None and base.optim.batch_size_given)
    sections = {
        name: section(**{f.name: flat[f.name] for f in fields(section) if f.name in flat})
        for name, section in _SECTIONS.items()
    }
    top = {k: flat[k] for k in _TOP_FIELDS if k in flat}
    return RunConfig(**top, **sections)


def _command_defaults(command: str) -> dict[str, Any]:
    return dict(FINETUNE_DEFAULTS) if command == "finetune" else {}


def default_for(command: str, name: str) -> Any:
    """The default a flag has for a command, for `--help` texts."""
    if command == "finetune" and name in FINETUNE_DEFAULTS:
        return FINETUNE_DEFAULTS[name]
    return next(f.default for f in fields(section_of(name)) if f.name == name)


def changed_values(before: RunConfig, after: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Options whose value differs between two configs: what a resume reports as overridden."""
    old, new = before.flat(), after.flat()
    return {k: (old[k], new[k]) for k in new if old.get(k) != new[k]}
