"""GGUF k-quants and i-quants (`gguf_outtype: q4_k_m | q5_k_m | q6_k | iq4_xs`) by llama.cpp's own quantizer,
through llama-cpp-python's binding of `llama_model_quantize`: lmforge writes the model's GGUF in 16 bits, llama.cpp
quantizes it with the same code (and per-tensor choices: Q6_K output and value layers in q4_k_m, fallbacks for rows
its blocks do not divide) as its `llama-quantize` tool. Why not our own: llama.cpp's k-quant search is the
reference, and a file it wrote is one it reads."""

from __future__ import annotations

import contextlib
import logging
import os

from lmforge.errors import LmforgeError

logger = logging.getLogger(__name__)



def quantize_gguf(source: str, target: str, outtype: str, threads: int | None = None) -> None:
    """Quantize the 16-bit GGUF `source` into `target` as `outtype` (one of LLAMA_CPP_GGUF_TYPES)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}")  # e.g. LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = threads or os.cpu_count() or 1
    with _quiet():
        code = llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
    if code != 0 or not os.path.isfile(target):
        raise LmforgeError(f"lmforge export: llama.cpp could not quantize '{source}' to {outtype} (code {code}).")


@contextlib.contextmanager
def _quiet():
    """llama.cpp logs a line per tensor it quantizes, through llama-cpp-python's logger: kept to its warnings and
    errors while lmforge quantizes."""
    import llama_cpp._logger  # noqa: F401 - installs the callback that routes llama.cpp's log through it

    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)
