"""Step decisions in one process: signals become a stop after the step, saves come on schedule."""

from __future__ import annotations

import os
import signal
import time

import torch

from imagenet_cli.core.context import DistContext
from imagenet_cli.train.stops import StepControl

ALONE = DistContext(rank=0, local_rank=0, world_size=1, local_world_size=1, device=torch.device("cpu"))


def test_a_signal_asks_to_stop_after_the_current_step_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with StepControl(ALONE) as control:
        assert not control.after_step(1).stop
        os.kill(os.getpid(), signal.SIGUSR1)
        decision = control.after_step(2)
        assert decision.stop and control.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_saves_come_every_n_steps():
    with StepControl(ALONE, save_every_steps=3) as control:
        assert [control.after_step(step).save for step in range(1, 8)] == [
            False,
            False,
            True,
            False,
            False,
            True,
            False,
        ]


def test_saves_come_every_m_minutes_once_per_interval():
    with StepControl(ALONE, save_every_minutes=0.001) as control:  # 60 ms
        assert not control.after_step(1).save
        time.sleep(0.08)
        assert control.after_step(2).save
        assert not control.after_step(3).save
        assert not control.at_epoch_end()
