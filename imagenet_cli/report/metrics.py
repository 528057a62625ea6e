"""The figures a run reports: what the engine measures and every reporter shows or writes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metrics:
    loss: float
    acc1: float
    acc5: float
    images: int
    seconds: float
    per_class: tuple[tuple[int, int], ...] = ()  # evaluation: (top-1 correct, images) for each class
    data_seconds: float = 0.0  # of `seconds`, the time spent waiting for the next batch
    confusion: tuple[tuple[int, ...], ...] = ()  # evaluation, when asked: images by (true, predicted) class
    image_size: int = 0  # training: the side of the crops trained on, read from the batches (0: none)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait(self) -> float:
        """The share of the time the model waited for data: near 1 means the input pipeline is the limit."""
        return min(1.0, self.data_seconds / self.seconds) if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train: Metrics
    val: Metrics
    lr: float
    best_acc1: float
    is_best: bool
    saved: str | None
    ema: Metrics | None = None  # validation of the weight average, with --model-ema
