"""How and where a run happens (processes, devices, speed settings, saves) and the run as a whole."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from .data import DataConfig
from .model import ModelConfig
from .optim import OptimConfig
from .options import DIST, EVERYWHERE, MODEL, OPTIM, RESUMABLE, SPEED, check, check_choice, option

COMMANDS = ("train", "evaluate", "finetune")
BACKENDS = ("nccl", "gloo", "mpi", "ucc", "xccl")
AMP_MODES = ("auto", "none", "bf16", "fp16")
WORKERS_PER_CORE = 4  # local processes of a CPU run
_PLACE = {"panel": DIST, "commands": EVERYWHERE, "placement": True}  # where a run happens: never from a file
_TOOL_CHECKPOINT = (
    "A checkpoint of this tool (it stores its configuration), or of the reference scripts (give DATA; "
    "--arch when the file does not name it)."
)


@dataclass(frozen=True)
class DistConfig:
    """How many processes, where, and how they meet. Flags keep the reference script's meaning:
    with --multiprocessing-distributed, `world_size` and `rank` count *nodes*; without it, processes."""

    world_size: int = option(
        1, "--world-size", **_PLACE, show_default="1", help="Nodes with --multiprocessing-distributed, else processes."
    )
    rank: int = option(
        0, "--rank", **_PLACE, show_default="0",
        help="This node's rank with --multiprocessing-distributed, else this process's.",
    )  # fmt: skip
    dist_url: str | None = option(
        None, "--dist-url", **_PLACE,
        help="Rendezvous of a multi-node run, tcp://HOST:PORT of node 0. Local runs need none.",
    )  # fmt: skip
    dist_backend: str | None = option(
        None, "--dist-backend", **_PLACE, show_default="nccl on CUDA, gloo otherwise", choices=BACKENDS,
        help="The process group's backend.",
    )  # fmt: skip
    multiprocessing_distributed: bool = option(
        False, "--multiprocessing-distributed", panel=DIST, commands=EVERYWHERE,
        help="Spawn --nproc-per-node workers on this node, one per GPU (DDP).",
    )  # fmt: skip
    nproc_per_node: int | None = option(
        None, "--nproc-per-node", panel=DIST, commands=EVERYWHERE, show_default="one per GPU, 1 without GPUs",
        help="Workers --multiprocessing-distributed spawns per node.",
    )  # fmt: skip
    gpu: int | None = option(None, "--gpu", **_PLACE, help="GPU of a single-process run.")
    no_accel: bool = option(
        False, "--no-accel", panel=DIST, commands=EVERYWHERE, help="Run on the CPU even if an accelerator is present."
    )
    data_parallel: bool = option(
        False, "--data-parallel", panel=DIST, commands=frozenset({"train"}),
        help="Legacy nn.DataParallel over all visible GPUs in one process.",
    )  # fmt: skip
    dist_timeout: float = option(
        600.0, "--dist-timeout", panel=DIST, commands=EVERYWHERE,
        help="Seconds to wait for every process to join, and for any one collective, before failing.",
    )  # fmt: skip
    sync_bn: bool = option(
        False, "--sync-bn", panel=DIST, help="BatchNorm statistics over the whole batch of every GPU (CUDA only)."
    )

    def __post_init__(self) -> None:
        check(self.dist_timeout > 0, f"--dist-timeout must be positive, got {self.dist_timeout}")
        check(self.world_size >= 1, f"--world-size must be at least 1, got {self.world_size}")
        check(
            0 <= self.rank < self.world_size,
            f"--rank {self.rank} is out of range for --world-size {self.world_size} (ranks are 0..{self.world_size - 1})",
        )
        check(
            self.nproc_per_node is None or self.nproc_per_node >= 1,
            f"--nproc-per-node must be at least 1, got {self.nproc_per_node}",
        )
        check_choice("--dist-backend", self.dist_backend, BACKENDS, optional=True)
        check(
            self.dist_url is None or "://" in self.dist_url,
            f"--dist-url must look like tcp://HOST:PORT or env://, got {self.dist_url!r}",
        )
        check(self.gpu is None or self.gpu >= 0, f"--gpu must be 0 or more, got {self.gpu}")
        check(
            not (self.data_parallel and self.multiprocessing_distributed),
            "--data-parallel is the single-process mode; it cannot be combined with --multiprocessing-distributed",
        )


@dataclass(frozen=True)
class ComputeConfig:
    """How the model runs on its device. The defaults are the fast settings that are safe there."""

    amp: str = option(
        "auto", "--amp", panel=SPEED, commands=EVERYWHERE, choices=AMP_MODES,
        show_default="bf16 on GPUs that support it and on CPUs with AMX, fp16 on older GPUs, else none",
        help="Mixed precision (autocast): none, bf16, or fp16 with a gradient scaler.",
    )  # fmt: skip
    channels_last: bool | None = option(
        None, "--channels-last/--no-channels-last", panel=SPEED, commands=EVERYWHERE, toggle=True,
        show_default="on for convolutional models on CUDA and CPU",
        help="NHWC memory layout for the model and its input (faster convolutions on tensor cores and oneDNN).",
    )  # fmt: skip
    compile: bool = option(
        False, "--compile", panel=SPEED, commands=RESUMABLE,
        help="torch.compile the model (minutes of compilation first; then usually 10-25% faster on GPUs).",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_choice("--amp", self.amp, AMP_MODES)


@dataclass(frozen=True)
class SaveConfig:
    """Checkpoints beyond the one written after every epoch."""

    save_every_steps: int | None = option(
        None, "--save-every-steps", commands=RESUMABLE,
        help="Also write a resumable checkpoint every N steps inside an epoch.",
    )  # fmt: skip
    save_every_minutes: float | None = option(
        None, "--save-every-minutes", commands=RESUMABLE,
        help="Also write a resumable checkpoint every M minutes inside an epoch.",
    )  # fmt: skip
    keep_epochs: int | None = option(
        None, "--keep-epochs", commands=RESUMABLE, help="Also keep checkpoint_epoch_NNN.pth.tar of the last K epochs."
    )

    def __post_init__(self) -> None:
        for flag, value in (
            ("--save-every-steps", self.save_every_steps),
            ("--save-every-minutes", self.save_every_minutes),
            ("--keep-epochs", self.keep_epochs),
        ):
            check(value is None or value > 0, f"{flag} must be positive, got {value}")


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
    output_dir: str = option(
        ".", "--output-dir", filename=True, commands=RESUMABLE, placement=True, show_default="current directory",
        help="Where checkpoint.pth.tar and model_best.pth.tar go.",
        variants={"resume": {"help": "Where new checkpoints go.", "show_default": "the checkpoint's directory"}},
    )  # fmt: skip
    print_freq: int = option(10, "-p", "--print-freq", commands=EVERYWHERE, help="Steps between progress lines.")
    seed: int | None = option(
        None, "--seed", panel=OPTIM,
        help="Seed every worker (distinct, reproducible streams per rank and loader worker); deterministic cuDNN.",
    )  # fmt: skip
    resume: str | None = option(
        None, "--resume", filename=True, commands=frozenset({"train", "resume"}), recorded=False,
        help="Continue from this checkpoint; its stored configuration is the base and flags given here override "
        "it. 'auto': the newest intact checkpoint in --output-dir, or a fresh start if there is none (for restarts).",
        variants={"resume": {"flags": ("CHECKPOINT",), "argument": True, "param": "checkpoint", "required": True,
                             "help": _TOOL_CHECKPOINT}},
    )  # fmt: skip
    evaluate_only: bool = option(
        False, "-e", "--evaluate", key="evaluate", commands=frozenset({"train"}), recorded=False,
        help="Only evaluate the model (with --resume or --pretrained) on val/.",
    )  # fmt: skip
    checkpoint: str | None = option(
        None, "CHECKPOINT", argument=True, filename=True, param="checkpoint", required=True, commands=frozenset({"evaluate"}),
        recorded=False,
        help="Checkpoint or weights file (this tool's, the reference script's, DataParallel's, a plain state_dict).",
    )  # fmt: skip
    ema: bool = option(
        False, "--ema", panel=MODEL, commands=frozenset({"evaluate"}), recorded=False,
        help="Score the checkpoint's weight average (--model-ema, torchvision's model_ema) instead of its weights.",
    )  # fmt: skip
    confusion_plot: str | None = option(
        None, "--plot", filename=True, commands=frozenset({"evaluate"}), recorded=False,
        help='Also draw the confusion matrix into this PNG file (pip install "imagenet-cli[plot]").',
    )  # fmt: skip
    json: bool = option(
        False, "--json", commands=frozenset({"evaluate"}), recorded=False,
        help="Print the result as JSON on stdout (progress goes to stderr).",
    )  # fmt: skip
    quiet: bool = option(
        False, "-q", "--quiet", commands=EVERYWHERE, recorded=False, help="Print only errors (and --json results)."
    )
    verbose: bool = option(
        False, "-v", "--verbose", commands=EVERYWHERE, recorded=False,
        help="Also print every resolved option at the start, and the data-wait share and LR in progress lines.",
    )  # fmt: skip
    debug: bool = option(False, "--debug", commands=EVERYWHERE, recorded=False, help="Show full tracebacks.")
    log_dir: str | None = option(
        None, "--log-dir", filename=True, commands=EVERYWHERE, placement=True,
        help="Write each rank's own log to LOG_DIR/workerlog.RANK (its progress, warnings and traceback); "
        "ranks other than 0 print there instead of the terminal.",
    )  # fmt: skip
    tensorboard: bool = option(
        False, "--tensorboard/--no-tensorboard", commands=RESUMABLE, toggle=True, show_default=False,
        help='Also write TensorBoard scalars to OUTPUT_DIR/tensorboard (pip install "imagenet-cli[tensorboard]").',
    )  # fmt: skip

    def __post_init__(self) -> None:
        check(self.command in COMMANDS, f"unknown command {self.command!r}")
        check(self.print_freq >= 1, f"--print-freq must be at least 1, got {self.print_freq}")
        check(not (self.quiet and self.verbose), "--quiet and --verbose contradict each other; give one")
        check(
            not self.tensorboard or importlib.util.find_spec("tensorboard") is not None,
            '--tensorboard needs the tensorboard package: pip install "imagenet-cli[tensorboard]" '
            "(or leave --tensorboard out; metrics.jsonl has the same figures)",
        )
        check(
            self.command != "finetune" or bool(self.model.weights or self.model.pretrained),
            "finetune needs a starting point: --weights PATH or --pretrained",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of str/int/float/bool/None, safe for `torch.load(weights_only=True)`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Rebuild a stored configuration; keys this version does not know are dropped, so checkpoints
        from older or newer versions still resume."""
        kwargs: dict[str, Any] = {
            name: section(**_known(section, raw[name]))
            for name, section in SECTIONS.items()
            if isinstance(raw.get(name), dict)
        }
        kwargs.update(_known(cls, {k: v for k, v in raw.items() if k not in SECTIONS}))
        return cls(**kwargs)

    def flat(self) -> dict[str, Any]:
        """Every option by its configuration name, the inverse of `build_config`'s input."""
        out = {k: getattr(self, k) for k in TOP_FIELDS}
        for name in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, name)))
        return out

    def as_recipe(self) -> RunConfig:
        """A stored configuration as a recipe: what to train, without where that run happened (addresses,
        ranks, GPUs, output and log directories) or what one command line asked (evaluate only, a plot to
        draw, a download...). It is data, and must not make a resume connect to an address, write to a
        folder or do something else than train. Process and worker counts stay when this machine has a
        core for each."""
        from . import INVOCATION_ONLY

        cores = os.cpu_count() or 1
        nproc = self.dist.nproc_per_node if (self.dist.nproc_per_node or 0) <= cores else None
        dist = dataclasses.replace(
            self.dist, world_size=1, rank=0, dist_url=None, dist_backend=None, gpu=None, nproc_per_node=nproc
        )
        workers = self.data.workers if (self.data.workers or 0) <= cores else None
        data = dataclasses.replace(self.data, download=False, workers=workers)
        one_command_line = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name in INVOCATION_ONLY}
        command = self.command if self.command in ("train", "finetune") else "train"
        return dataclasses.replace(
            self, command=command, data=data, dist=dist, output_dir=".", log_dir=None, **one_command_line
        )


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "optim": OptimConfig,
    "dist": DistConfig,
    "compute": ComputeConfig,
    "save": SaveConfig,
    "model": ModelConfig,
}  # built in this order: the model last, since checking an arch imports torchvision (seconds)
TOP_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS)


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}
