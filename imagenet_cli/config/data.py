"""Where images come from and the shapes they arrive in: the data options."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from ..core.formats import DATASETS, FORMATS, lookup, shown, url_scheme
from .options import DATA, EVERYWHERE, RUNS, SPEED, TRAINING, check, check_choice, option

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
MAX_PREFETCH = 64
MAX_SHUFFLE_BUFFER = 100_000  # samples held per loader worker
MAX_WORKERS = 256  # loader workers per process (a stored count is also kept only up to this machine's cores)
# Progressive resizing (FFCV's ImageNet recipes): the crop is START up to epoch A, END from epoch B, and
# between them takes sizes in steps that keep convolutions and channels-last efficient.
SMALLEST_PROGRESSIVE = 16
RISE_FROM, RISE_TO = 0.7, 0.85  # of the epochs, by default: FFCV's rn50 configs rise over about 72% to 85%


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and the shapes they arrive in."""

    path: str | None = option(
        None, "DATA", argument=True, filename=True, param="data", alias="--data", key="data", commands=EVERYWHERE,
        help="Dataset root: train/ and val/ class folders (ImageNet layout), train.csv and val.csv manifests, "
        "tar shards (make-shards), or the root of a --dataset. Not needed with --fake-data.",
        variants={"resume": {"alias": None, "help": "Dataset root, if it moved since the run started (required for "
                             "files of the reference scripts)."}},
    )  # fmt: skip
    fake: bool = option(
        False, "--fake-data", "--dummy", key="fake-data", panel=DATA, commands=RUNS,
        help="Synthetic, learnable images: no data directory, no download.",
    )  # fmt: skip
    data_format: str = option(
        "auto", "--data-format", panel=DATA, commands=RUNS, show_default="recognised from DATA", choices=FORMATS,
        help="How DATA is stored: imagefolder (train/ and val/ class folders), csv (train.csv, val.csv), "
        "torchvision (with --dataset), webdataset (tar shards).",
    )  # fmt: skip
    dataset: str | None = option(
        None, "--dataset", panel=DATA, commands=RUNS, choices=tuple(DATASETS),
        help="A torchvision dataset read from DATA (its root).",
    )  # fmt: skip
    train_manifest: str | None = option(
        None, "--train-manifest", filename=True, panel=DATA, commands=TRAINING,
        show_default="DATA/train.csv",
        help="CSV of the training images: a header, then path,label rows (paths relative to the CSV).",
    )  # fmt: skip
    val_manifest: str | None = option(
        None, "--val-manifest", filename=True, panel=DATA, commands=RUNS, show_default="DATA/val.csv",
        help="CSV of the validation images.",
        variants={"evaluate": {"flags": ("--manifest", "--val-manifest"), "help": "CSV of the images to evaluate "
                               "(a test split: desc_test.csv)."}},
    )  # fmt: skip
    val_split: str = option(
        "val", "--split", panel=DATA, commands=frozenset({"evaluate"}),
        help="The class folder (or shards' split) of DATA to evaluate: val, test, ...",
    )  # fmt: skip
    download: bool = option(
        False, "--download", panel=DATA, commands=RUNS, recorded=False,
        help="Let torchvision download --dataset into DATA (never needed when the files are there).",
    )  # fmt: skip
    shuffle_buffer: int = option(
        2000, "--shuffle-buffer", panel=DATA, help="Samples a sharded stream shuffles among (per loader worker)."
    )
    workers: int | None = option(
        None, "-j", "--workers", panel=DATA, commands=EVERYWHERE,
        show_default="CPU cores per process, at most 8", help="Data loading workers per process.",
    )  # fmt: skip
    image_size: int | None = option(
        None, "--image-size", "--train-crop-size", panel=DATA, commands=RUNS, show_default="224; 64 with --fake-data",
        help="Training crop size in pixels.",
    )  # fmt: skip
    progressive_resize: str | None = option(
        None, "--progressive-resize", panel=DATA, metavar="START:END", show_default="off",
        help="Progressive resizing: the training crop rises from START to END pixels over "
        "--progressive-resize-epochs, in steps of 32 px (16 below 128), so early epochs cost less (FFCV's "
        "recipes: 160:192). Sets the training crop size; validation keeps --val-resize-size and --val-crop-size.",
    )  # fmt: skip
    progressive_resize_epochs: str | None = option(
        None, "--progressive-resize-epochs", panel=DATA, metavar="A:B",
        show_default=f"{RISE_FROM:.0%} to {RISE_TO:.0%} of --epochs",
        help="The epochs over which the crop rises: START up to epoch A, END from epoch B on (counted from 0), "
        "linear between.",
    )  # fmt: skip
    val_resize_size: int | None = option(
        None, "--val-resize-size", panel=DATA, commands=RUNS, show_default="val crop / 0.875",
        help="Validation images are resized to this, then centre-cropped.",
    )  # fmt: skip
    val_crop_size: int | None = option(
        None, "--val-crop-size", panel=DATA, commands=RUNS, show_default="--image-size", help="Validation centre crop."
    )
    num_classes: int | None = option(
        None, "--num-classes", panel=DATA, commands=RUNS, show_default=str(FAKE_NUM_CLASSES),
        help="Classes of --fake-data; with real data, the model's outputs when more than its classes "
        "(the reference script's 1000).",
    )  # fmt: skip
    fake_train_images: int = option(1000, "--fake-train-images", panel=DATA, help="Training set size of --fake-data.")
    fake_val_images: int = option(
        200, "--fake-val-images", panel=DATA, commands=RUNS, help="Validation set size of --fake-data."
    )
    prefetch_factor: int = option(
        4, "--prefetch-factor", panel=DATA, commands=EVERYWHERE, help="Batches each loader worker prepares ahead."
    )
    decode_on_device: bool = option(
        False, "--decode-on-device", panel=SPEED, commands=RUNS,
        help="Decode JPEGs on the training device (nvJPEG on CUDA, batched), not in the loader workers: "
        "for machines with few CPU cores per GPU.",
    )  # fmt: skip
    skip_bad_images: bool = option(
        False, "--skip-bad-images", panel=DATA, commands=EVERYWHERE,
        help="An image that cannot be read is named in a warning and replaced by the next one (default: the run "
        "stops, naming it).",
    )  # fmt: skip
    max_bad_images: int = option(
        100, "--max-bad-images", panel=DATA, commands=EVERYWHERE,
        help="With --skip-bad-images: stop once a process has met more unreadable images than this.",
    )  # fmt: skip
    hflip: float = option(
        0.5, "--hflip", panel=DATA, metavar="P",
        help="Probability of flipping a training image left to right (0 where a mirror image is another "
        "thing: digits, text, some medical images).",
    )  # fmt: skip
    crop_scale: tuple[float, float] = option(
        (0.08, 1.0), "--crop-scale", panel=DATA, metavar="MIN MAX",
        help="The random crop's share of the picture's area (RandomResizedCrop's scale); e.g. 0.35 1 keeps "
        "more of each image.",
    )  # fmt: skip
    crop_ratio: tuple[float, float] = option(
        (3 / 4, 4 / 3), "--crop-ratio", panel=DATA, metavar="MIN MAX",
        help="The random crop's range of aspect ratios, width / height (RandomResizedCrop's ratio).",
    )  # fmt: skip
    ra_reps: int = option(
        1, "--ra-reps", panel=DATA,
        help="Repeated augmentation: each training image this many times an epoch, differently augmented, spread "
        "over the ranks (torchvision's --ra-sampler with --ra-reps; 1: off). The epoch keeps its length.",
    )  # fmt: skip
    # Training augmentations, per sample in the loader workers after the crop and flip (validation never):
    auto_augment: str | None = option(
        None, "--auto-augment", panel=DATA, show_default="none", choices=AUTO_AUGMENT_POLICIES,
        help="Augmentation policy of training images, after the crop and flip: ra (RandAugment), ta_wide "
        "(TrivialAugmentWide), augmix (AugMix) or imagenet (AutoAugment's ImageNet policy).",
    )  # fmt: skip
    ra_magnitude: int = option(
        9, "--ra-magnitude", panel=DATA, help="Magnitude of RandAugment's operations, 0-30 (with --auto-augment ra)."
    )
    augmix_severity: int = option(
        3, "--augmix-severity", panel=DATA, help="Severity of AugMix's operations, 1-10 (with --auto-augment augmix)."
    )
    random_erase: float = option(
        0.0, "--random-erase", panel=DATA, metavar="P", show_default="0: off",
        help="Probability of erasing a random rectangle (2-33% of the area) of each training image, filled "
        "with the mean pixel.",
    )  # fmt: skip
    interpolation: str = option(
        "bilinear", "--interpolation", panel=DATA, choices=INTERPOLATIONS,
        help="Resampling of the training crop's and the validation resize.",
    )  # fmt: skip

    def __post_init__(self) -> None:
        manifests = bool(self.train_manifest or self.val_manifest)
        check(
            self.fake or bool(self.path) or manifests,
            "DATA is required (a directory with train/ and val/, CSV manifests, shards or a --dataset root), "
            "or use --fake-data",
        )
        check_choice("--data-format", self.data_format, FORMATS)
        check(
            not url_scheme(self.path) or shown(self.path or "") == self.path,
            "DATA's URL holds a password or a query string: give credentials through the store's environment or "
            "config files instead (a URL is written into config.json and every checkpoint)",
        )
        native = self._native_size()
        check(
            self.workers is None or 0 <= self.workers <= MAX_WORKERS,
            f"--workers must be from 0 to {MAX_WORKERS}, got {self.workers}",
        )
        image_size = self._progressive_end() or self.image_size or native or (FAKE_IMAGE_SIZE if self.fake else 224)
        crop = self.val_crop_size or image_size
        resize = self.val_resize_size or (crop if crop == native else round(crop / VAL_CROP_RATIO))
        num_classes = self.num_classes or (FAKE_NUM_CLASSES if self.fake else None)
        self._check_sizes(image_size, crop, resize)
        check(
            num_classes is None or 2 <= num_classes <= MAX_CLASSES,
            f"--num-classes must be from 2 to {MAX_CLASSES:,}, got {num_classes}",
        )
        for flag, count in (
            ("--fake-train-images", self.fake_train_images),
            ("--fake-val-images", self.fake_val_images),
        ):
            check(0 < count <= MAX_FAKE_IMAGES, f"{flag} must be from 1 to {MAX_FAKE_IMAGES:,}, got {count}")
        check(
            1 <= self.prefetch_factor <= MAX_PREFETCH,
            f"--prefetch-factor must be from 1 to {MAX_PREFETCH}, got {self.prefetch_factor}",
        )
        check(self.max_bad_images >= 0, f"--max-bad-images must be 0 or more, got {self.max_bad_images}")
        check(
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
            check(8 <= value <= most, f"{flag} must be from 8 to {most} pixels, got {value}")
        check(resize >= crop, f"--val-resize-size ({resize}) must not be smaller than --val-crop-size ({crop})")

    def _progressive_end(self) -> int | None:
        """END of --progressive-resize, checked: the crop the last epochs train at, so it is the image size."""
        if self.progressive_resize is None:
            check(
                self.progressive_resize_epochs is None,
                "--progressive-resize-epochs needs --progressive-resize START:END",
            )
            return None
        start, end = _span("--progressive-resize", self.progressive_resize, "START:END in pixels, e.g. 160:192")
        check(start <= end, f"--progressive-resize {start}:{end}: START must not be larger than END (it rises)")
        largest = MAX_FAKE_SIDE if self.fake else MAX_SIDE
        check(
            start >= SMALLEST_PROGRESSIVE and end <= largest,
            f"--progressive-resize sizes must be from {SMALLEST_PROGRESSIVE} to {largest} pixels, got {start}:{end}",
        )
        check(
            self.image_size in (None, end),
            f"--progressive-resize {start}:{end} sets the training crop size (END, {end} at the last epochs); "
            f"leave out --train-crop-size {self.image_size}",
        )
        if self.progressive_resize_epochs is not None:
            first, last = self.rise_epochs(0)
            check(first <= last, f"--progressive-resize-epochs {first}:{last}: A must not be after B")
        return end

    def rise_epochs(self, epochs: int) -> tuple[int, int]:
        """The epochs A:B over which the crop rises (given, or FFCV's share of a run of `epochs`)."""
        if self.progressive_resize_epochs is None:
            return math.floor(RISE_FROM * epochs + 0.5), math.floor(RISE_TO * epochs + 0.5)
        return _span("--progressive-resize-epochs", self.progressive_resize_epochs, "A:B, epochs like 11:13")

    def crop_size_at(self, epoch: int, epochs: int) -> int:
        """The training crop of `epoch` (from 0) in a run of `epochs`: a pure function of the configuration,
        so a resumed run, mid-epoch too, trains each epoch at the size an uninterrupted one would. FFCV's
        rule: START until A, END from B, between them the straight line rounded to a step (32 px, 16 below
        128: sizes channels-last convolutions run well at), never outside START..END."""
        assert self.image_size is not None
        if self.progressive_resize is None:
            return self.image_size
        start, end = _span("--progressive-resize", self.progressive_resize, "START:END")
        first, last = self.rise_epochs(epochs)
        if epoch <= first:
            return start
        if epoch >= last:
            return end
        size = start + (end - start) * (epoch - first) / (last - first)
        step = 16 if size < 128 else 32
        return min(end, max(start, math.floor(size / step + 0.5) * step))

    def _native_size(self) -> int | None:
        """A --dataset's own picture size (its format becomes torchvision's)."""
        if not self.dataset:
            check(self.data_format != "torchvision", "--data-format torchvision needs --dataset NAME")
            return None
        check(
            self.data_format in ("auto", "torchvision"),
            f"--dataset reads a torchvision dataset; it cannot be combined with --data-format {self.data_format}",
        )
        object.__setattr__(self, "data_format", "torchvision")
        return lookup(self.dataset).native_size

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
        check_choice("--auto-augment", self.auto_augment, AUTO_AUGMENT_POLICIES, optional=True)
        check(0 <= self.ra_magnitude <= 30, f"--ra-magnitude must be between 0 and 30, got {self.ra_magnitude}")
        check(
            1 <= self.augmix_severity <= 10, f"--augmix-severity must be between 1 and 10, got {self.augmix_severity}"
        )
        check(0 <= self.hflip <= 1, f"--hflip is a probability, from 0 to 1; got {self.hflip}")
        # A file gives a pair as a list: held as a tuple of floats, so it compares equal to the flag's value.
        object.__setattr__(self, "crop_scale", _pair("--crop-scale", self.crop_scale))
        object.__setattr__(self, "crop_ratio", _pair("--crop-ratio", self.crop_ratio))
        low, high = self.crop_scale
        check(0 < low <= high <= 1, f"--crop-scale takes 0 < MIN <= MAX <= 1; got {low:g} {high:g}")
        low, high = self.crop_ratio
        check(0 < low <= high <= 100, f"--crop-ratio takes 0 < MIN <= MAX (at most 100); got {low:g} {high:g}")
        check(1 <= self.ra_reps <= 16, f"--ra-reps is from 1 (off) to 16; got {self.ra_reps}")
        check(
            re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", self.val_split) is not None
            and ".." not in self.val_split,
            f"--split names a folder of DATA (letters, digits, _ - .), not a path; got {self.val_split[:40]!r}",
        )
        check(0 <= self.random_erase <= 1, f"--random-erase is a probability, from 0 to 1; got {self.random_erase}")
        check_choice("--interpolation", self.interpolation, INTERPOLATIONS)
        check(
            not (self.fake and self.augmented),
            "--fake-data images are made on the device and are not augmented; drop --auto-augment and --random-erase",
        )
        check(
            not (self.decode_on_device and self.augmented),
            "--auto-augment and --random-erase run in the loader workers, but --decode-on-device crops on the "
            "device; use one or the other",
        )


def _span(flag: str, text: str, form: str) -> tuple[int, int]:
    """Two whole numbers written LOW:HIGH, as `--progressive-resize 160:192` takes them."""
    found = re.fullmatch(r"\s*(\d{1,6})\s*:\s*(\d{1,6})\s*", str(text))
    check(found is not None, f"{flag} takes {form}; got {str(text)[:40]!r}")
    assert found is not None
    return int(found[1]), int(found[2])


def _pair(flag: str, values: tuple[float, float] | list[float]) -> tuple[float, float]:
    check(len(values) == 2, f"{flag} takes two numbers, MIN MAX")
    return float(values[0]), float(values[1])
