"""What hardware this process trains on (kept apart from config parsing, which asks it)."""

from __future__ import annotations


def accelerator_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and hasattr(xpu, "is_available") and xpu.is_available()))


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def auto_precision(key: str) -> bool:
    """`bf16: auto` is true on a GPU that supports bfloat16; `fp16: auto` on a GPU that does not."""
    import torch

    if not torch.cuda.is_available():
        return False
    return torch.cuda.is_bf16_supported() if key == "bf16" else not torch.cuda.is_bf16_supported()
