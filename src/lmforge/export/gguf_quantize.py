"""GGUF k-quants and i-quants (`gguf_outtype: q4_k_m | q5_k_m | q6_k | iq4_xs`) by llama.cpp's own quantizer,
through llama-cpp-python's binding of `llama_model_quantize`: lmforge writes the model's GGUF in 16 bits, llama.cpp
quantizes it with the same code (and per-tensor choices: Q6_K output and value layers in q4_k_m, fallbacks for rows
its blocks do not divide) as its `llama-quantize` tool. Why not our own: llama.cpp's k-quant search is the
reference, and a file it wrote is one it reads."""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from lmforge.errors import LmforgeError

logger = logging.getLogger(__name__)



def quantize_gguf(source: str, target: str, outtype: str, threads: int | None = None,
                  imatrix: dict[str, np.ndarray] | None = None) -> None:
    """Quantize the 16-bit GGUF `source` into `target` as `outtype` (one of LLAMA_CPP_GGUF_TYPES), weighing each
    input column's rounding error by `imatrix` (GGUF tensor name -> mean squared input per column) where given."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}")  # e.g. LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = threads or os.cpu_count() or 1
    if imatrix:
        # llama.cpp reads entries up to the first without a name; the arrays stay alive in `kept` during the call
        kept = {name: np.ascontiguousarray(values, dtype=np.float32) for name, values in imatrix.items()}
        entries = (llama_cpp.llama_model_imatrix_data * (len(kept) + 1))()
        for entry, (name, values) in zip(entries, kept.items(), strict=False):
            entry.name = name.encode()
            entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = values.size
        params.imatrix = entries
    with _quiet():
        code = llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
    if code != 0 or not os.path.isfile(target):
        raise LmforgeError(f"lmforge export: llama.cpp could not quantize '{source}' to {outtype} (code {code}).")


# ggml's log levels (ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line).
_GGML_WARN, _GGML_ERROR, _GGML_CONT = 3, 4, 5


@contextlib.contextmanager
def _quiet():
    """llama.cpp logs a line per tensor it quantizes. While lmforge quantizes, its log goes to lmforge's logger, kept
    to warnings and errors; llama-cpp-python's own callback maps ggml's levels as they were before DEBUG was added
    (INFO read as WARNING), so its level setting would not quiet them."""
    import ctypes

    import llama_cpp
    import llama_cpp._logger

    pending: list[str] = []
    last = [0]

    @llama_cpp.llama_log_callback
    def to_logger(level: int, text: bytes, _user_data) -> None:
        level = last[0] if level == _GGML_CONT else level
        last[0] = level
        if level in (_GGML_WARN, _GGML_ERROR):
            pending.append(text.decode("utf-8", "replace"))
            if pending[-1].endswith("\n"):
                message = "".join(pending).strip()
                pending.clear()
                if message:
                    logger.log(logging.WARNING if level == _GGML_WARN else logging.ERROR, "llama.cpp: %s", message)

    llama_cpp.llama_log_set(to_logger, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))
