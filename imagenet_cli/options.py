"""Option declarations shared by the commands, so each flag is spelled, documented and defaulted once.

Every option defaults to None, meaning "not given"; `--help` shows the real default, taken from `config.py`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .config import default_for

DATA_PANEL, MODEL_PANEL, OPTIM_PANEL, DIST_PANEL, RUN_PANEL = "Data", "Model", "Optimisation", "Distributed", "Run"
SPEED_PANEL = "Speed"
RECIPE_PANEL = "Recipe (schedules, regularisation, EMA)"


def _d(name: str, command: str = "train") -> str:
    return str(default_for(command, name))


# Options shared by several commands. Each defaults to None: "not given".
DataDir = Annotated[
    str | None,
    typer.Argument(
        metavar="DATA",
        help="Dataset root: train/ and val/ class folders (ImageNet layout), train.csv and val.csv manifests, "
        "tar shards (make-shards), or the root of a --dataset. Not needed with --fake-data.",
    ),
]
FakeData = Annotated[
    bool,
    typer.Option(
        "--fake-data",
        "--dummy",
        help="Synthetic, learnable images: no data directory, no download.",
        rich_help_panel=DATA_PANEL,
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "-j",
        "--workers",
        help="Data loading workers per process.",
        show_default="CPU cores per process, at most 8",
        rich_help_panel=DATA_PANEL,
    ),
]
ImageSize = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        "--train-crop-size",
        help="Training crop size in pixels.",
        show_default="224; 64 with --fake-data",
        rich_help_panel=DATA_PANEL,
    ),
]
ValResize = Annotated[
    int | None,
    typer.Option(
        "--val-resize-size",
        help="Validation images are resized to this, then centre-cropped.",
        show_default="val crop / 0.875",
        rich_help_panel=DATA_PANEL,
    ),
]
ValCrop = Annotated[
    int | None,
    typer.Option(
        "--val-crop-size", help="Validation centre crop.", show_default="--image-size", rich_help_panel=DATA_PANEL
    ),
]
NumClasses = Annotated[
    int | None,
    typer.Option(
        "--num-classes",
        help="Classes of --fake-data (real data: the class folders).",
        show_default="10",
        rich_help_panel=DATA_PANEL,
    ),
]
FakeTrain = Annotated[
    int | None,
    typer.Option(
        "--fake-train-images",
        help="Training set size of --fake-data.",
        show_default=_d("fake_train_images"),
        rich_help_panel=DATA_PANEL,
    ),
]
FakeVal = Annotated[
    int | None,
    typer.Option(
        "--fake-val-images",
        help="Validation set size of --fake-data.",
        show_default=_d("fake_val_images"),
        rich_help_panel=DATA_PANEL,
    ),
]

Arch = Annotated[
    str | None,
    typer.Option(
        "-a",
        "--arch",
        help="Any torchvision classification model (torchvision.models.list_models()).",
        show_default=_d("arch"),
        rich_help_panel=MODEL_PANEL,
    ),
]
Pretrained = Annotated[
    bool,
    typer.Option(
        "--pretrained",
        help="Start from torchvision's weights for --arch, read from the local torch hub cache ($TORCH_HOME).",
        rich_help_panel=MODEL_PANEL,
    ),
]


def epochs(command: str) -> Any:
    return Annotated[
        int | None,
        typer.Option(
            "--epochs", help="Total epochs to run.", show_default=_d("epochs", command), rich_help_panel=OPTIM_PANEL
        ),
    ]


def batch(command: str) -> Any:
    split = (
        "split as evenly as it goes: it changes no figure"
        if command == "evaluate"
        else "a typed -b must divide; the default is rounded down to divide"
    )
    return Annotated[
        int | None,
        typer.Option(
            "-b", "--batch-size",
            help=f"Total batch over ALL processes of the run; each of N processes takes batch/N ({split}). "
            "Unlike the reference script, the same -b means the same optimisation on 1 GPU or 64.",
            show_default=_d("batch_size", command), rich_help_panel=OPTIM_PANEL,
        ),
    ]  # fmt: skip


def lr(command: str) -> Any:
    return Annotated[
        float | None,
        typer.Option(
            "--lr",
            "--learning-rate",
            help="Initial learning rate.",
            show_default=_d("lr", command),
            rich_help_panel=OPTIM_PANEL,
        ),
    ]


def lr_step(command: str) -> Any:
    return Annotated[
        int | None,
        typer.Option(
            "--lr-step-size",
            help="Multiply the LR by --lr-gamma every this many epochs.",
            show_default=_d("lr_step_size", command),
            rich_help_panel=OPTIM_PANEL,
        ),
    ]


StartEpoch = Annotated[
    int | None,
    typer.Option(
        "--start-epoch",
        help="Epoch number to start at (useful on restarts).",
        show_default="0",
        rich_help_panel=OPTIM_PANEL,
    ),
]
Momentum = Annotated[
    float | None,
    typer.Option("--momentum", help="SGD momentum.", show_default=_d("momentum"), rich_help_panel=OPTIM_PANEL),
]
WeightDecay = Annotated[
    float | None,
    typer.Option(
        "--wd", "--weight-decay", help="Weight decay.", show_default=_d("weight_decay"), rich_help_panel=OPTIM_PANEL
    ),
]
LrGamma = Annotated[
    float | None,
    typer.Option(
        "--lr-gamma",
        help="LR multiplier at each step of the schedule.",
        show_default=_d("lr_gamma"),
        rich_help_panel=OPTIM_PANEL,
    ),
]
Seed = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="Seed every worker (distinct, reproducible streams per rank and loader worker); deterministic cuDNN.",
        rich_help_panel=OPTIM_PANEL,
    ),
]

WorldSize = Annotated[
    int | None,
    typer.Option(
        "--world-size",
        help="Nodes with --multiprocessing-distributed, else processes.",
        show_default="1",
        rich_help_panel=DIST_PANEL,
    ),
]
Rank = Annotated[
    int | None,
    typer.Option(
        "--rank",
        help="This node's rank with --multiprocessing-distributed, else this process's.",
        show_default="0",
        rich_help_panel=DIST_PANEL,
    ),
]
DistUrl = Annotated[
    str | None,
    typer.Option(
        "--dist-url",
        help="Rendezvous of a multi-node run, tcp://HOST:PORT of node 0. Local runs need none.",
        rich_help_panel=DIST_PANEL,
    ),
]
DistBackend = Annotated[
    str | None,
    typer.Option(
        "--dist-backend",
        help="nccl, gloo, ...",
        show_default="nccl on CUDA, gloo otherwise",
        rich_help_panel=DIST_PANEL,
    ),
]
MultiProc = Annotated[
    bool,
    typer.Option(
        "--multiprocessing-distributed",
        help="Spawn --nproc-per-node workers on this node, one per GPU (DDP).",
        rich_help_panel=DIST_PANEL,
    ),
]
NprocPerNode = Annotated[
    int | None,
    typer.Option(
        "--nproc-per-node",
        help="Workers --multiprocessing-distributed spawns per node.",
        show_default="one per GPU, 1 without GPUs",
        rich_help_panel=DIST_PANEL,
    ),
]
Gpu = Annotated[int | None, typer.Option("--gpu", help="GPU of a single-process run.", rich_help_panel=DIST_PANEL)]
NoAccel = Annotated[
    bool,
    typer.Option("--no-accel", help="Run on the CPU even if an accelerator is present.", rich_help_panel=DIST_PANEL),
]
DataParallel = Annotated[
    bool,
    typer.Option(
        "--data-parallel",
        help="Legacy nn.DataParallel over all visible GPUs in one process.",
        rich_help_panel=DIST_PANEL,
    ),
]

PrintFreq = Annotated[
    int | None,
    typer.Option(
        "-p",
        "--print-freq",
        help="Steps between progress lines.",
        show_default=_d("print_freq"),
        rich_help_panel=RUN_PANEL,
    ),
]
OutputDir = Annotated[
    str | None,
    typer.Option(
        "--output-dir",
        help="Where checkpoint.pth.tar and model_best.pth.tar go.",
        show_default="current directory",
        rich_help_panel=RUN_PANEL,
    ),
]
Quiet = Annotated[
    bool, typer.Option("-q", "--quiet", help="Print only errors (and --json results).", rich_help_panel=RUN_PANEL)
]
Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.", rich_help_panel=RUN_PANEL)]
Verbose = Annotated[
    bool,
    typer.Option(
        "-v",
        "--verbose",
        help="Also print every resolved option at the start, and the data-wait share and LR in progress lines.",
        rich_help_panel=RUN_PANEL,
    ),
]
LogDir = Annotated[
    str | None,
    typer.Option(
        "--log-dir",
        help="Write each rank's own log to LOG_DIR/workerlog.RANK (its progress, warnings and traceback); "
        "ranks other than 0 print there instead of the terminal.",
        rich_help_panel=RUN_PANEL,
    ),
]
TensorBoard = Annotated[
    bool | None,
    typer.Option(
        "--tensorboard/--no-tensorboard",
        help='Also write TensorBoard scalars to OUTPUT_DIR/tensorboard (pip install "imagenet-cli[tensorboard]").',
        show_default=False,
        rich_help_panel=RUN_PANEL,
    ),
]
ConfusionPlot = Annotated[
    str | None,
    typer.Option(
        "--plot",
        help='Also draw the confusion matrix into this PNG file (pip install "imagenet-cli[plot]").',
        rich_help_panel=RUN_PANEL,
    ),
]
ConfigFile = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="Options from a recipe file (.toml, .yaml or .json; keys are the long flag names, as in a run's "
        "config.json); flags given here override it.",
        rich_help_panel=RUN_PANEL,
    ),
]
Json = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the result as JSON on stdout (progress goes to stderr).", rich_help_panel=RUN_PANEL
    ),
]

# Options of one command each.
ResumeFrom = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="Continue from this checkpoint; its stored configuration is the base and flags given here override it. "
        "'auto': the newest intact checkpoint in --output-dir, or a fresh start if there is none (for restarts).",
        rich_help_panel=RUN_PANEL,
    ),
]

EvaluateOnly = Annotated[
    bool,
    typer.Option(
        "-e",
        "--evaluate",
        help="Only evaluate the model (with --resume or --pretrained) on val/.",
        rich_help_panel=RUN_PANEL,
    ),
]

CheckpointFile = Annotated[
    str,
    typer.Argument(
        metavar="CHECKPOINT",
        help="Checkpoint or weights file (this tool's, the reference script's, opt.DataParallel's, a plain state_dict).",
    ),
]

RecordedArch = Annotated[
    str | None,
    typer.Option(
        "-a", "--arch", help="Architecture, when the checkpoint does not record it.", rich_help_panel=MODEL_PANEL
    ),
]

ToolCheckpoint = Annotated[
    str,
    typer.Argument(
        metavar="CHECKPOINT",
        help="A checkpoint of this tool (it stores its configuration), or of the reference scripts (give DATA; "
        "--arch when the file does not name it).",
    ),
]

MovedDataDir = Annotated[
    str | None,
    typer.Argument(
        metavar="DATA",
        help="Dataset root, if it moved since the run started (required for files of the reference scripts).",
    ),
]

ResumeOutputDir = Annotated[
    str | None,
    typer.Option(
        "--output-dir",
        help="Where new checkpoints go.",
        show_default="the checkpoint's directory",
        rich_help_panel=RUN_PANEL,
    ),
]

Weights = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="Checkpoint or weights file to start from (any format evaluate accepts).",
        rich_help_panel=MODEL_PANEL,
    ),
]

WeightsArch = Annotated[
    str | None,
    typer.Option(
        "-a", "--arch", help="Architecture; taken from --weights when it records one.", rich_help_panel=MODEL_PANEL
    ),
]

SaveEverySteps = Annotated[
    int | None,
    typer.Option(
        "--save-every-steps",
        help="Also write a resumable checkpoint every N steps inside an epoch.",
        rich_help_panel=RUN_PANEL,
    ),
]
SaveEveryMinutes = Annotated[
    float | None,
    typer.Option(
        "--save-every-minutes",
        help="Also write a resumable checkpoint every M minutes inside an epoch.",
        rich_help_panel=RUN_PANEL,
    ),
]
KeepEpochs = Annotated[
    int | None,
    typer.Option(
        "--keep-epochs",
        help="Also keep checkpoint_epoch_NNN.pth.tar of the last K epochs.",
        rich_help_panel=RUN_PANEL,
    ),
]

AnyCheckpoint = Annotated[
    str,
    typer.Argument(metavar="CHECKPOINT", help="Any checkpoint or weights file the tool can read."),
]

GradClip = Annotated[
    float | None,
    typer.Option(
        "--grad-clip",
        "--clip-grad-norm",
        help="Clip the norm of all gradients together to this (e.g. 1.0); a cure for loss spikes and NaNs.",
        rich_help_panel=OPTIM_PANEL,
    ),
]
NormWeightDecay = Annotated[
    float | None,
    typer.Option(
        "--norm-weight-decay",
        help="Weight decay of normalisation layers (e.g. 0).",
        show_default="--wd",
        rich_help_panel=OPTIM_PANEL,
    ),
]
BiasWeightDecay = Annotated[
    float | None,
    typer.Option(
        "--bias-weight-decay", help="Weight decay of biases (e.g. 0).", show_default="--wd", rich_help_panel=OPTIM_PANEL
    ),
]
FREEZE_PANEL = "Transfer learning"
FreezeBackbone = Annotated[
    bool,
    typer.Option(
        "--freeze-backbone",
        help="Train only the classifier head; the backbone's BatchNorm statistics stay as loaded.",
        rich_help_panel=FREEZE_PANEL,
    ),
]
BackboneLrMult = Annotated[
    float | None,
    typer.Option(
        "--backbone-lr-mult",
        help="The backbone's LR as a fraction of the head's (0 freezes it).",
        show_default="1.0",
        rich_help_panel=FREEZE_PANEL,
    ),
]
UnfreezeAtEpoch = Annotated[
    int | None,
    typer.Option(
        "--unfreeze-at-epoch",
        help="Train the head alone until this epoch, then everything.",
        rich_help_panel=FREEZE_PANEL,
    ),
]

Amp = Annotated[
    str | None,
    typer.Option(
        "--amp",
        help="Mixed precision (autocast): none, bf16, or fp16 with a gradient scaler.",
        show_default="bf16 on GPUs that support it, fp16 on older GPUs, none on CPU",
        rich_help_panel=SPEED_PANEL,
    ),
]
ChannelsLast = Annotated[
    bool | None,
    typer.Option(
        "--channels-last/--no-channels-last",
        help="NHWC memory layout for the model and its input (faster convolutions on tensor cores and oneDNN).",
        show_default="on for convolutional models on CUDA and CPU",
        rich_help_panel=SPEED_PANEL,
    ),
]
Compile = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="torch.compile the model (minutes of compilation first; then usually 10-25% faster on GPUs).",
        rich_help_panel=SPEED_PANEL,
    ),
]
DecodeOnDevice = Annotated[
    bool,
    typer.Option(
        "--decode-on-device",
        help="Decode JPEGs on the training device (nvJPEG on CUDA, batched), not in the loader workers: "
        "for machines with few CPU cores per GPU.",
        rich_help_panel=SPEED_PANEL,
    ),
]
PrefetchFactor = Annotated[
    int | None,
    typer.Option(
        "--prefetch-factor",
        help="Batches each loader worker prepares ahead.",
        show_default=_d("prefetch_factor"),
        rich_help_panel=DATA_PANEL,
    ),
]

BenchData = Annotated[
    str | None,
    typer.Argument(
        metavar="[DATA]",
        help="A dataset root whose train/ images the pipeline reads; without it, ImageNet-like JPEGs are generated.",
    ),
]
BenchArch = Annotated[str, typer.Option("-a", "--arch", help="Architecture to measure.", rich_help_panel=MODEL_PANEL)]
BenchBatch = Annotated[int, typer.Option("-b", "--batch-size", help="Batch size.", rich_help_panel=OPTIM_PANEL)]
BenchImageSize = Annotated[int, typer.Option("--image-size", help="Image size in pixels.", rich_help_panel=DATA_PANEL)]
BenchSteps = Annotated[int, typer.Option("--steps", help="Timed steps per measurement.", rich_help_panel=RUN_PANEL)]
BenchWarmup = Annotated[
    int, typer.Option("--warmup", help="Untimed steps first (autotuning, compilation).", rich_help_panel=RUN_PANEL)
]
BenchImages = Annotated[
    int,
    typer.Option("--images", help="JPEGs the pipeline reads (and generates without DATA).", rich_help_panel=DATA_PANEL),
]
BenchOnly = Annotated[
    list[str] | None,
    typer.Option(
        "--only",
        help="Measure only this part: train, eval, pipeline or e2e (repeatable).",
        show_default="all four",
        rich_help_panel=RUN_PANEL,
    ),
]

DataFormat = Annotated[
    str | None,
    typer.Option(
        "--data-format",
        help="How DATA is stored: imagefolder (train/ and val/ class folders), csv (train.csv, val.csv), "
        "torchvision (with --dataset), webdataset (tar shards).",
        show_default="recognised from DATA",
        rich_help_panel=DATA_PANEL,
    ),
]
Dataset = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="A torchvision dataset read from DATA (its root): cifar10, cifar100, mnist, fashion-mnist, kmnist, "
        "svhn, stl10, imagenette.",
        rich_help_panel=DATA_PANEL,
    ),
]
DataRoot = Annotated[
    str | None, typer.Option("--data", help="DATA, given as an option.", show_default=False, rich_help_panel=DATA_PANEL)
]
TrainManifest = Annotated[
    str | None,
    typer.Option(
        "--train-manifest",
        help="CSV of the training images: a header, then path,label rows (paths relative to the CSV).",
        show_default="DATA/train.csv",
        rich_help_panel=DATA_PANEL,
    ),
]
ValManifest = Annotated[
    str | None,
    typer.Option(
        "--val-manifest", help="CSV of the validation images.", show_default="DATA/val.csv", rich_help_panel=DATA_PANEL
    ),
]
Download = Annotated[
    bool,
    typer.Option(
        "--download",
        help="Let torchvision download --dataset into DATA (never needed when the files are there).",
        rich_help_panel=DATA_PANEL,
    ),
]
ShuffleBuffer = Annotated[
    int | None,
    typer.Option(
        "--shuffle-buffer",
        help="Samples a sharded stream shuffles among (per loader worker).",
        show_default=_d("shuffle_buffer"),
        rich_help_panel=DATA_PANEL,
    ),
]
ShardsOut = Annotated[str, typer.Argument(metavar="OUT", help="Folder for the shards and their index, shards.json.")]
ShardSize = Annotated[
    str,
    typer.Option("--shard-size", help="About this many bytes per shard: 1GB, 500MB, 64KB.", rich_help_panel=DATA_PANEL),
]
SourceDir = Annotated[
    str, typer.Argument(metavar="DATA", help="A dataset of train/ and val/ class folders, or train.csv and val.csv.")
]

DistTimeout = Annotated[
    float | None,
    typer.Option(
        "--dist-timeout",
        help="Seconds to wait for every process to join, and for any one collective, before failing.",
        show_default=_d("dist_timeout"),
        rich_help_panel=DIST_PANEL,
    ),
]

SkipBadImages = Annotated[
    bool,
    typer.Option(
        "--skip-bad-images",
        help="An image that cannot be read is named in a warning and replaced by the next one (default: the run "
        "stops, naming it).",
        rich_help_panel=DATA_PANEL,
    ),
]
MaxBadImages = Annotated[
    int | None,
    typer.Option(
        "--max-bad-images",
        help="With --skip-bad-images: stop once a process has met more unreadable images than this.",
        show_default=_d("max_bad_images"),
        rich_help_panel=DATA_PANEL,
    ),
]
CheckDataDir = Annotated[
    str, typer.Argument(metavar="DATA", help="The dataset to check: class folders, CSV manifests or shards.")
]

PlotRunDirs = Annotated[
    list[str],
    typer.Argument(
        metavar="RUN_DIR",
        help="Runs to draw (their --output-dir, holding metrics.jsonl); several are overlaid, one colour each.",
    ),
]
PlotOutput = Annotated[
    str | None,
    typer.Option(
        "-o",
        "--output",
        help="PNG file to write.",
        show_default="RUN_DIR/curves.png for one run, ./runs.png for several",
        rich_help_panel=RUN_PANEL,
    ),
]

PredictInputs = Annotated[
    list[str],
    typer.Argument(
        metavar="IMAGE_OR_DIR...",
        help="Image files, and directories searched recursively for image files (by extension, sorted).",
    ),
]
TopK = Annotated[
    int, typer.Option("-k", "--top-k", help="Classes shown per image, most likely first.", rich_help_panel=RUN_PANEL)
]
PredictBatch = Annotated[
    int, typer.Option("-b", "--batch-size", help="Images per forward pass.", rich_help_panel=DATA_PANEL)
]

ModelsFilter = Annotated[
    str | None,
    typer.Argument(
        metavar="FILTER",
        help="Show only architectures whose name contains this, in any case (resnet, vit_, efficientnet).",
    ),
]

ExportFormat = Annotated[
    str,
    typer.Option(
        "--format",
        help="torchscript (traced module, class names and preprocessing inside), onnx (needs the onnx package), "
        "or state_dict (plain weights for torchvision's model); ONNX and state_dict get OUTPUT.json beside them.",
        rich_help_panel=RUN_PANEL,
    ),
]
ExportOutput = Annotated[
    str | None,
    typer.Option(
        "-o",
        "--output",
        help="File to write.",
        show_default="CHECKPOINT's name with .ts, .onnx or .pth, beside it; NAME-ema.EXT with --ema",
        rich_help_panel=RUN_PANEL,
    ),
]
ExportEma = Annotated[
    bool,
    typer.Option(
        "--ema", help="Export the averaged weights of a --model-ema run instead.", rich_help_panel=MODEL_PANEL
    ),
]
EvaluateEma = Annotated[
    bool,
    typer.Option(
        "--ema",
        help="Score the checkpoint's weight average (--model-ema, torchvision's model_ema) instead of its weights.",
        rich_help_panel=MODEL_PANEL,
    ),
]
ClassNamesFrom = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="A dataset whose classes name the outputs (for files that store no class names, as the "
        "reference script's).",
        rich_help_panel=MODEL_PANEL,
    ),
]
ExportImageSize = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        help="Input crop size in pixels the exported model is traced at and its preprocessing crops to.",
        show_default="the size the checkpoint was validated at",
        rich_help_panel=DATA_PANEL,
    ),
]


# The parts of modern training recipes (torchvision's and timm's), with the reference recipe as default.
def _recipe(flag: str, kind: Any, help: str, field: str | None = None, default: str | None = None) -> Any:
    shown = default if default is not None else _d(field or flag.lstrip("-").replace("-", "_"))
    return Annotated[kind | None, typer.Option(flag, help=help, show_default=shown, rich_help_panel=RECIPE_PANEL)]


Opt = _recipe("--opt", str, "Optimizer: sgd, nesterov (SGD with Nesterov momentum), adamw, rmsprop.")
LrScheduler = _recipe(
    "--lr-scheduler", str,
    "LR schedule, set every step: step (× --lr-gamma every --lr-step-size epochs), multistep (at "
    "--lr-milestones), cosine or linear (down to --lr-min), exponential (× --lr-gamma per epoch), constant.",
)  # fmt: skip
LrMilestones = _recipe(
    "--lr-milestones", str, "multistep: the epochs at which to multiply by --lr-gamma, e.g. 30,60,80.", default="none"
)
LrMin = _recipe("--lr-min", float, "cosine: the LR the schedule ends at.")
LrWarmupEpochs = _recipe(
    "--lr-warmup-epochs", float, "Warm the LR up over this many epochs (fractions allowed); the schedule starts after."
)
LrWarmupMethod = _recipe(
    "--lr-warmup-method", str, "Warmup: linear (from --lr-warmup-decay × LR up to the LR) or constant."
)
LrWarmupDecay = _recipe("--lr-warmup-decay", float, "The fraction of the LR the warmup starts at.")
LabelSmoothing = _recipe("--label-smoothing", float, "Label smoothing of the training loss (e.g. 0.1).")
MixupAlpha = _recipe(
    "--mixup-alpha", float, "Mixup: blend batch pairs with a Beta(α, α) weight, on the device (0: off; e.g. 0.2)."
)
CutmixAlpha = _recipe(
    "--cutmix-alpha", float, "CutMix: paste a box of another image, area from Beta(α, α) (0: off; e.g. 1.0). With "
    "mixup too, each batch gets one of the two.",
)  # fmt: skip
ModelEma = Annotated[
    bool,
    typer.Option(
        "--model-ema", help="Keep a running average of the weights; validated and saved beside the model.",
        rich_help_panel=RECIPE_PANEL,
    ),
]  # fmt: skip
ModelEmaDecay = _recipe("--model-ema-decay", float, "Weight of the old average at each EMA update.")
ModelEmaSteps = _recipe("--model-ema-steps", int, "Optimizer steps between EMA updates.")
ModelEmaWarmupEpochs = _recipe(
    "--model-ema-warmup-epochs", float, "Until then the average just copies the weights (e.g. the LR warmup)."
)
BestBy = _recipe("--best-by", str, "Which top-1 picks model_best.pth.tar: model, or ema (with --model-ema).")
GradAccumSteps = _recipe(
    "--grad-accum-steps", int,
    "Accumulate gradients over this many batches per optimizer step: the step sees -b × this many images "
    "(set --lr for that batch); only the last batch of each group is all-reduced.",
)  # fmt: skip
SyncBn = Annotated[
    bool,
    typer.Option(
        "--sync-bn", help="BatchNorm statistics over the whole batch of every GPU (CUDA only).",
        rich_help_panel=DIST_PANEL,
    ),
]  # fmt: skip

AutoAugment = Annotated[
    str | None,
    typer.Option(
        "--auto-augment",
        help="Augmentation policy of training images, after the crop and flip: ra (RandAugment), ta_wide "
        "(TrivialAugmentWide), augmix (AugMix) or imagenet (AutoAugment's ImageNet policy).",
        show_default="none",
        rich_help_panel=DATA_PANEL,
    ),
]
RaMagnitude = Annotated[
    int | None,
    typer.Option(
        "--ra-magnitude",
        help="Magnitude of RandAugment's operations, 0-30 (with --auto-augment ra).",
        show_default=_d("ra_magnitude"),
        rich_help_panel=DATA_PANEL,
    ),
]
AugmixSeverity = Annotated[
    int | None,
    typer.Option(
        "--augmix-severity",
        help="Severity of AugMix's operations, 1-10 (with --auto-augment augmix).",
        show_default=_d("augmix_severity"),
        rich_help_panel=DATA_PANEL,
    ),
]
RandomErase = Annotated[
    float | None,
    typer.Option(
        "--random-erase",
        metavar="P",
        help="Probability of erasing a random rectangle (2-33% of the area) of each training image, filled "
        "with the mean pixel.",
        show_default="0: off",
        rich_help_panel=DATA_PANEL,
    ),
]
Interpolation = Annotated[
    str | None,
    typer.Option(
        "--interpolation",
        help="Resampling of the training crop's and the validation resize: bilinear, bicubic or nearest.",
        show_default=_d("interpolation"),
        rich_help_panel=DATA_PANEL,
    ),
]
