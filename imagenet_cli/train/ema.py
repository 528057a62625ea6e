"""A running average of the model's weights (`--model-ema`), which often validates better than the
weights themselves at the end of a long schedule.

The average lives in a second copy of the plain model, updated in place every `every` optimizer steps:
average = decay · average + (1 − decay) · weights, BatchNorm statistics included. Whether an update
happens depends only on the optimizer step count, so a resumed run averages exactly as an uninterrupted
one. During its warmup the average simply follows the weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    def __init__(self, model: nn.Module, decay: float, every: int) -> None:
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay, self.every = decay, every
        # State-dict tensors share storage with the modules, so these pairs stay valid for the whole run.
        mine, theirs = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in mine.items() if v.is_floating_point()]
        self._averaged, self._current = [mine[k] for k in floats], [theirs[k] for k in floats]
        self._counts = [(mine[k], theirs[k]) for k in mine if k not in floats]  # num_batches_tracked: copied

    @torch.no_grad()
    def update(self, optimizer_steps: int, warming_up: bool) -> None:
        """Called after every optimizer step with the run's count of them so far."""
        if optimizer_steps % self.every:
            return
        if warming_up:
            torch._foreach_copy_(self._averaged, self._current)
        else:
            torch._foreach_lerp_(self._averaged, self._current, 1 - self.decay)
        for average, current in self._counts:
            average.copy_(current)
