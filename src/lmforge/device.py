"""What hardware this process trains on (kept apart from config parsing, which asks it), or, while `lmforge plan`
checks a config, the GPU machine the plan is for: it has CUDA and the GPU packages the config names."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_PLANNED_GPUS: contextvars.ContextVar[bool] = contextvars.ContextVar("planned_gpus", default=False)


@contextlib.contextmanager
def planning_for_gpus() -> Iterator[None]:
    """Inside: the checks of what this machine has answer for a GPU machine with the run's packages (a plan made on
    a laptop for a cluster); the rest of each config check is unchanged."""
    token = _PLANNED_GPUS.set(True)
    try:
        yield
    finally:
        _PLANNED_GPUS.reset(token)


def planning() -> bool:
    """Inside `planning_for_gpus`."""
    return _PLANNED_GPUS.get()


def installed(package: str) -> bool:
    """The package can be imported here (or, while planning, on the machine planned for)."""
    import importlib.util

    return _PLANNED_GPUS.get() or importlib.util.find_spec(package) is not None


def accelerator_available() -> bool:
    if _PLANNED_GPUS.get():
        return True
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and hasattr(xpu, "is_available") and xpu.is_available()))


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_available() -> bool:
    if _PLANNED_GPUS.get():
        return True
    import torch

    return torch.cuda.is_available()


def auto_precision(key: str) -> bool:
    """`bf16: auto` is true on a GPU that supports bfloat16; `fp16: auto` on a GPU that does not (while planning: a
    GPU with bfloat16)."""
    if _PLANNED_GPUS.get():
        return key == "bf16"
    import torch

    if not torch.cuda.is_available():
        return False
    return torch.cuda.is_bf16_supported() if key == "bf16" else not torch.cuda.is_bf16_supported()
