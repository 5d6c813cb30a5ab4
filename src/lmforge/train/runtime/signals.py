"""Graceful stop: SIGTERM or SIGINT asks the run to save a checkpoint at the end of the current step and exit 0;
a second signal exits at once.

Schedulers send SIGTERM before killing a preempted job, and Ctrl-C sends SIGINT. When `lmforge train` launched
torchrun itself, it forwards the signal straight to each worker once (lmforge.launch); under an external torchrun,
torchrun forwards it (and reports the stop as a failure even though the checkpoint was saved). Ranks agree on when
to stop through `stop_agreed`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Set by the first SIGTERM/SIGINT while installed; the training loop polls it at the end of each step."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            print(f"lmforge: second signal ({name}): exiting now, without saving.", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signal_name = name
        print(f"lmforge: {name} received: saving a checkpoint at the end of this step, then stopping "
              "(send it again to exit at once).", file=sys.stderr, flush=True)

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle the signals for the duration of the block (only the main thread can install handlers; elsewhere
        the default behaviour is kept)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def stopped_message(signal_name: str, step: int, max_steps: int, checkpoint: str) -> str:
    """What a run stopped by a signal says (the exit status is 0: nothing is lost)."""
    return (f"Stopped by {signal_name} after step {step} of {max_steps}. The checkpoint {checkpoint} holds the run; "
            "run the same command with resume_from_checkpoint=true to continue it.")


def stop_agreed(local: bool, device) -> bool:
    """True on every process when any process wants to stop (one tiny all-reduce, only when distributed), so all
    ranks save the same step and leave the loop together."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
