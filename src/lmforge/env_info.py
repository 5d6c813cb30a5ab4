"""`lmforge env`: versions and devices, for bug reports."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess

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
    info.update(devices())
    return info


def _threads() -> int:
    """CPU cores this process may run on (what torch's default thread count follows)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _torch_cuda_build() -> str | None:
    """The CUDA version the installed torch was built for, read from its version file: importing torch to ask takes
    seconds, and `lmforge env` answers at once. None for a CPU build (or no torch)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        with open(os.path.join(list(spec.submodule_search_locations)[0], "version.py"), encoding="utf-8") as fh:
            found = re.search(r"^cuda(?::\s*\S+)?\s*=\s*'([^']+)'", fh.read(), re.MULTILINE)
    except OSError:
        return None
    return found.group(1) if found else None


def _nvidia_gpus() -> list[tuple[str, float, float]]:
    """(name, memory GiB, compute capability) of each NVIDIA GPU, from nvidia-smi (empty without one)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        query = ["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, memory, capability = (part.strip() for part in line.split(","))
        try:
            gpus.append((name, float(memory) / 1024, float(capability)))
        except ValueError:
            continue
    return gpus


def devices() -> dict[str, str]:
    """The accelerators this machine has, found without importing torch (nvidia-smi; Apple silicon's MPS)."""
    info = {"cpu threads": str(_threads())}
    gpus = _nvidia_gpus()
    if gpus:
        info["cuda (torch build)"] = _torch_cuda_build() or "none: this torch is a CPU build"
        for i, (name, memory, _) in enumerate(gpus):
            info[f"gpu {i}"] = f"{name} ({memory:.1f} GiB)"
        info["bf16"] = str(all(capability >= 8 for _, _, capability in gpus))
    elif platform.system() == "Darwin" and platform.machine() == "arm64":
        info["device"] = "mps"
    else:
        info["device"] = "cpu only (no accelerator found)"
    return info
