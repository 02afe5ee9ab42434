"""Ending a (possibly multi-process) accelerate run without hanging."""

from __future__ import annotations

import gc

from accelerate import Accelerator


def end_training(accelerator: Accelerator) -> None:
    """Drop accelerate's references to the prepared (DDP-wrapped) models and optimizers, then end the
    process group on every rank together.

    A DDP reducer that outlives the process group — freed when the trainer's frame unwinds, after
    ``end_training`` destroyed the group and the peer process exited — joins gloo threads that wait for that
    peer, and hangs. Callers delete their own references to the wrapped model before calling this.
    """
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()
