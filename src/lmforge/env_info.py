"""`lmforge env`: versions and devices, for bug reports."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("lmforge", "torch", "transformers", "datasets", "tokenizers", "accelerate", "peft", "trl",
            "safetensors", "deepspeed", "flash-attn", "liger-kernel", "bitsandbytes", "vllm")


def environment() -> dict[str, str]:
    info = {"platform": platform.platform(), "python": platform.python_version()}
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name in ("lmforge", "torch", "transformers", "datasets", "peft", "trl", "accelerate"):
                info[name] = "not installed"
    from lmforge.config.hub import hub_summary

    info["hub"] = hub_summary()
    import torch

    info["cpu threads"] = str(torch.get_num_threads())
    if torch.cuda.is_available():
        info["cuda"] = str(torch.version.cuda)
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info[f"gpu {i}"] = f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
        info["bf16"] = str(torch.cuda.is_bf16_supported())
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info["device"] = "mps"
    else:
        info["device"] = "cpu only (no accelerator found)"
    return info
