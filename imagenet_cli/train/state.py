"""What a checkpoint holds of a training run, part by part: each part writes its own keys and restores
itself from the file read once, so save and restore stay one pair (as torchtitan's `Stateful` objects).

The keys are the reference script's (`epoch`, `state_dict`, `best_acc1`, `optimizer`, `scheduler`) plus
this tool's; `checkpoint/files.make_checkpoint` adds the format, configuration and versions around them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..checkpoint import CHECKPOINT_NAME, LoadedCheckpoint, make_checkpoint, remake_epoch_copy, save_checkpoint
from ..config import RunConfig
from ..core import context, model_sources, models, randomness
from ..core.context import DistContext
from ..core.errors import UserError, one_line
from ..report import records
from . import optim
from . import torchvision_optimizer as torchvision_files
from .compute import Compute
from .ema import ModelEma
from .schedule import Schedule

BIT_EXACT_LOST = "training continues, but not bit-identically to the original run"


class Part(Protocol):
    """A piece of the run's state: its checkpoint keys, and its restore (returning a note for the user)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, resumed: LoadedCheckpoint) -> str | None: ...


@contextmanager
def naming(path: str, what: str) -> Iterator[None]:
    """A part of a checkpoint that cannot be restored is the file's problem: say which file and part."""
    try:
        yield
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
        raise UserError(f"{path}: its {what} cannot be restored ({one_line(exc)}); damaged?") from exc


@dataclass
class Progress:
    """Where training continues: a finished epoch saves (next epoch, step 0), a mid-epoch save the epoch
    under way and the batches done in it."""

    epoch: int
    step: int = 0
    best_acc1: float = 0.0

    @classmethod
    def start(cls, cfg: RunConfig, resumed: LoadedCheckpoint | None) -> Progress:
        """Computed once, before anything is built: freezing a backbone depends on the epoch."""
        if resumed is None:
            return cls(cfg.optim.start_epoch)
        epoch = resumed.epoch if resumed.epoch is not None else cfg.optim.start_epoch  # a plain state dict
        return cls(epoch, resumed.step, resumed.best_acc1 or 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "best_acc1": self.best_acc1}

    def load_state_dict(self, resumed: LoadedCheckpoint) -> str:
        where = f"epoch {self.epoch}, step {self.step}" if self.step else f"epoch {self.epoch}"
        return f"resuming {resumed.path} at {where} (best top-1 so far {self.best_acc1:.2f}%)"


@dataclass
class Weights:
    """The plain model (DDP wrappers may be replaced during a run, it is not)."""

    model: nn.Module
    arch: str

    def __post_init__(self) -> None:
        self.source = model_sources.record(self.arch)  # the code as it was when the run built the model

    def state_dict(self) -> dict[str, Any]:
        return {"state_dict": self.model.state_dict(), **({"model_source": self.source} if self.source else {})}

    def load_state_dict(self, resumed: LoadedCheckpoint) -> None:
        models.load_state(self.model, resumed.state_dict, self.arch, skip_head=False)


@dataclass
class Average:
    """`--model-ema`'s weight average; a file without one starts it from the file's weights."""

    ema: ModelEma
    arch: str

    def state_dict(self) -> dict[str, Any]:
        return {"ema_state": self.ema.module.state_dict()}

    def load_state_dict(self, resumed: LoadedCheckpoint) -> str | None:
        stored = resumed.state_dict_ema
        models.load_state(self.ema.module, resumed.state_dict if stored is None else stored, self.arch, skip_head=False)
        if stored is None:
            return "the checkpoint has no weight average: --model-ema starts from its weights"
        return None


@dataclass
class Optimizer:
    """Momentum buffers and step counts bit for bit; this run's settings (see `optim.restore`)."""

    optimizer: torch.optim.Optimizer
    cfg: RunConfig

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, resumed: LoadedCheckpoint) -> str | None:
        with naming(resumed.path, "optimizer state"):
            optim.restore(self.optimizer, torchvision_files.resumed_optimizer_state(resumed, self.optimizer, self.cfg))
        stored_batch = ((resumed.config or {}).get("optim") or {}).get("batch_size")
        if stored_batch in (None, self.cfg.optim.batch_size):
            return None
        return f"the checkpoint's run used batch {stored_batch}, this run {self.cfg.optim.batch_size}: {BIT_EXACT_LOST}"


@dataclass
class LearningRate:
    """The schedule is recomputed from the configuration; its entry in the file only informs, but for a
    plateau's counters (best loss, bad epochs, cooldown, the factor so far), which continue. torchvision's
    files keep their scheduler's next LR: say so when this run's schedule differs from it."""

    schedule: Schedule
    progress: Progress

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.schedule.state_dict(self.progress.epoch)}

    def load_state_dict(self, resumed: LoadedCheckpoint) -> str | None:
        plateau = (resumed.scheduler or {}).get("plateau")
        if self.schedule.plateau is not None and isinstance(plateau, dict):
            with naming(resumed.path, "plateau scheduler"):
                self.schedule.plateau.load_state_dict(plateau)
        stored = (resumed.scheduler or {}).get("_last_lr") if resumed.recipe is not None else None
        if not isinstance(stored, (list, tuple)) or not stored or not isinstance(stored[0], (int, float)):
            return None
        ours = self.schedule.lr_at(float(self.progress.epoch))
        if abs(float(stored[0]) - ours) <= 1e-9 * max(1.0, abs(ours)):
            return None
        return (
            f"{os.path.basename(resumed.path)}'s scheduler would continue at LR {float(stored[0]):g}; this run's "
            f"schedule gives {ours:g} (from --lr and the schedule options)"
        )


@dataclass
class LossScale:
    """The gradient scaler, continued only by the same kind of scaling (see `Compute.restore_scaler`), and
    the precision it scaled for, which a resume compares with its own."""

    scaler: torch.amp.GradScaler
    settings: Compute

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "precision": self.settings.precision}

    def load_state_dict(self, resumed: LoadedCheckpoint) -> str | None:
        """`--amp auto` resolves on the machine at hand, so a run resumed elsewhere (or from before bf16
        became the default on AMX CPUs) may continue in another precision: said, since the run is then
        no longer bit-identical to one never stopped."""
        self.settings.restore_scaler(self.scaler, resumed.scaler)
        stored, now = resumed.precision, self.settings.precision
        if stored is None or stored == now:
            return None
        flag = "none" if stored == "fp32" else stored
        return f"the checkpoint trained in {stored}, this run continues in {now} (--amp {flag} continues as it was)"


@dataclass
class Generators:
    """Every rank's random generators (dropout, augmentation, data order), gathered in rank order: saving
    is collective, so every rank calls `state_dict`."""

    ctx: DistContext

    def state_dict(self) -> dict[str, Any]:
        return {"rng_states": context.gather_to_main(randomness.capture(), self.ctx)}

    def load_state_dict(self, resumed: LoadedCheckpoint) -> str | None:
        states = resumed.rng_states or []
        if len(states) == self.ctx.world_size:
            with naming(resumed.path, "random generator states"):
                randomness.restore(states[self.ctx.rank])
        elif states:
            return (
                f"the checkpoint holds random states of {len(states)} ranks, this run has {self.ctx.world_size}: "
                f"{BIT_EXACT_LOST}"
            )
        return None


class TrainState:
    """The run's parts behind one save and one restore."""

    def __init__(self, cfg: RunConfig, ctx: DistContext, progress: Progress, class_names: list[str], *parts: Part):
        self.cfg, self.ctx, self.progress, self.class_names = cfg, ctx, progress, class_names
        self.parts = (*parts, progress)  # its "resuming ... at" note comes after the parts' notes
        self.path = os.path.join(cfg.output_dir, CHECKPOINT_NAME)

    def restore(self, resumed: LoadedCheckpoint | None) -> list[str]:
        """Every part from the file read once; returns the notes the parts had for the user. Then, for a
        fresh run too, `metrics.jsonl` keeps what the run did up to the point it continues from: lines
        written after it (by a run that was cut off, even before its first save) go, so every line is
        written once."""
        notes = [part.load_state_dict(resumed) for part in self.parts] if resumed is not None else []
        if self.ctx.is_main:
            records.trim(
                os.path.join(self.cfg.output_dir, records.METRICS_NAME), self.progress.epoch, self.progress.step
            )
            notes += self._remade_epoch_copy(resumed)
        return [note for note in notes if note] + (list(resumed.notes) if resumed is not None else [])

    def _remade_epoch_copy(self, resumed: LoadedCheckpoint | None) -> list[str]:
        """--keep-epochs: the continued epoch's copy, if a cut-off save never wrote it (this tool's epoch-end
        files only; the count kept is this run's own, never a file's)."""
        keep = self.cfg.save.keep_epochs
        if not keep or resumed is None or resumed.step != 0 or not resumed.is_own:
            return []
        return remake_epoch_copy(resumed.path, self.cfg.output_dir, self.progress.epoch, keep)

    def save(self, epoch: int, step: int, best_acc1: float | None = None, is_best: bool = False) -> None:
        """(epoch, step) is where a resumed run continues. Called on every rank: every rank's generators go in."""
        self.progress.epoch, self.progress.step = epoch, step
        if best_acc1 is not None:
            self.progress.best_acc1 = best_acc1
        state = {key: value for part in self.parts for key, value in part.state_dict().items()}
        if self.ctx.is_main:
            checkpoint = make_checkpoint(
                model_state=state.pop("state_dict"),
                arch=self.cfg.model.arch,
                config=self.cfg.to_dict(),
                class_names=self.class_names,
                **state,
            )
            save_checkpoint(checkpoint, self.cfg.output_dir, is_best, self.cfg.save.keep_epochs)
        context.barrier(self.ctx)  # no rank may leave before the file is whole
