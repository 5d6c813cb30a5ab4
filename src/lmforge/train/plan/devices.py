"""The GPUs a plan is for: `--gpus 8xH100-80GB` (a known model, its memory and peak bf16 FLOP/s) or
`--gpu-memory 24GiB --gpus 2` (any device, with `--tflops` for a time estimate)."""

from __future__ import annotations

import re
from dataclasses import dataclass

GIB = 2**30

# name: (memory as torch reports it, GiB; dense bf16 tensor-core peak, TFLOP/s; fp16 where the GPU has no bf16)
KNOWN_GPUS: dict[str, tuple[float, float]] = {
    "H100-80GB": (79.2, 989.0), "H100-PCIE": (79.2, 756.0), "H200": (139.8, 989.0), "H20": (95.0, 148.0),
    "B200": (178.4, 2250.0), "GH200": (94.5, 989.0), "A100-80GB": (79.2, 312.0), "A100-40GB": (39.4, 312.0),
    "A800-80GB": (79.2, 312.0), "L40S": (44.4, 362.0), "L40": (44.4, 181.0), "L20": (44.4, 119.5),
    "L4": (22.0, 121.0), "A10": (22.0, 125.0), "A6000": (47.5, 155.0), "RTX-6000-ADA": (47.5, 364.0),
    "RTX-5090": (31.4, 209.5), "RTX-4090": (23.5, 165.2), "RTX-3090": (23.6, 71.0), "V100-32GB": (31.7, 125.0),
    "T4": (14.6, 65.0), "MI300X": (191.5, 1307.0), "MI250X": (63.9, 383.0),
}
ALIASES = {"H100": "H100-80GB", "A100": "A100-80GB", "A800": "A800-80GB", "4090": "RTX-4090", "3090": "RTX-3090",
           "5090": "RTX-5090", "V100": "V100-32GB", "RTX4090": "RTX-4090", "RTX3090": "RTX-3090",
           "RTX5090": "RTX-5090", "H100-SXM": "H100-80GB", "A6000-ADA": "RTX-6000-ADA"}
# what a device holds before the run's tensors: the CUDA context and the allocator's own blocks
RESERVED_BYTES = GIB


@dataclass(frozen=True)
class Devices:
    name: str
    count: int
    memory: int  # bytes per device
    tflops: float | None  # dense bf16 peak per device, when known
    reserved: int = RESERVED_BYTES  # held before the run's tensors

    @property
    def usable(self) -> int:
        return self.memory - self.reserved

    def describe(self) -> str:
        return f"{self.count} x {self.name} ({self.memory / GIB:.1f} GiB each)"


def parse_memory(text: str) -> int:
    """'24GiB', '24GB' (read as GiB, as nvidia-smi's figures are), '80G', '24576MiB' -> bytes."""
    found = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not found:
        raise ValueError(f"--gpu-memory '{text}' is not a size such as 24GiB or 80GB")
    unit = {"": GIB, "K": 2**10, "M": 2**20, "G": GIB, "T": 2**40}[found.group(2).upper()]
    return int(float(found.group(1)) * unit)


def parse_devices(gpus: str | None, gpu_memory: str | None = None, tflops: float | None = None) -> Devices:
    """`gpus`: 'N', 'NxMODEL' or 'MODEL' (N defaults to 1); `gpu_memory` overrides (or stands for) the model."""
    count, model = 1, None
    if gpus:
        found = re.fullmatch(r"\s*(?:(\d+)\s*[xX*]\s*)?([A-Za-z0-9][\w-]*)?\s*", gpus)
        if not found or not (found.group(1) or found.group(2)):
            raise ValueError(f"--gpus '{gpus}' is not a count and/or a GPU, such as 8xH100-80GB, 2 or RTX-4090")
        if found.group(2) and found.group(2).isdigit() and found.group(2) not in ALIASES and not found.group(1):
            count = int(found.group(2))  # '--gpus 2'
        else:
            count = int(found.group(1) or 1)
            model = found.group(2)
    if count < 1:
        raise ValueError("--gpus needs at least one GPU")
    if model is not None:
        key = model.upper()
        key = ALIASES.get(key, key)
        if key not in KNOWN_GPUS:
            if gpu_memory is None:
                known = ", ".join(sorted(KNOWN_GPUS))
                raise ValueError(f"unknown GPU '{model}': known are {known}; or give its memory with --gpu-memory "
                                 "(and --tflops for a time estimate)")
        else:
            memory, peak = KNOWN_GPUS[key]
            return Devices(key, count, parse_memory(gpu_memory) if gpu_memory else int(memory * GIB),
                           tflops or peak)
    if gpu_memory is None:
        memory, peak = KNOWN_GPUS["H100-80GB"]
        return Devices("H100-80GB", count, int(memory * GIB), tflops or peak)
    return Devices(model or "GPU", count, parse_memory(gpu_memory), tflops)
