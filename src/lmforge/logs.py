"""Console logging for the CLI: lmforge's messages at INFO, libraries quieter."""

from __future__ import annotations

import logging
import os
import sys
import warnings

_HANDLER_NAME = "lmforge-console"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each message (it may be replaced after setup, e.g. when the
    CLI runs inside a host program that redirects it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value):  # the base class assigns it once; ignored
        pass


class _DropMessages(logging.Filter):
    """Drops a library's records that start with one of `starts` (import-time notices that say nothing to a user)."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


# torchao (`quantization_method: torchao`) loads its optional CUDA/FP8 kernels at import and logs each one that a
# CPU machine lacks; torch then warns about the enums torchao registers; bitsandbytes (which GaLore and APOLLO bring,
# and peft imports wherever it is installed) logs that its optional CPU 4-bit kernel is not downloaded. None of them
# concerns a run.
_IMPORT_NOTICES = {"torchao": ("Failed to load",), "torch.utils._pytree": ("%s is an Enum subclass",),
                   "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",)}


def quiet_import_notices() -> None:
    """The filters for `_IMPORT_NOTICES` (idempotent; the CLI installs them before a command loads a library)."""
    for name, starts in _IMPORT_NOTICES.items():
        library = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in library.filters):
            library.addFilter(_DropMessages(*starts))


def setup_logging(verbose: bool = False) -> None:
    """A console handler on the `lmforge` logger only (the root logger, and whatever the host program or pytest
    attached to it, is left alone)."""
    logger = logging.getLogger("lmforge")
    logger.setLevel(logging.DEBUG if verbose or os.environ.get("LMFORGE_DEBUG") else logging.INFO)
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = _StderrHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("[lmforge] %(message)s"))
        logger.addHandler(handler)
    quiet_import_notices()
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        transformers.logging.set_verbosity_warning()
    else:  # read when transformers configures its logger: a command that never needs it does not import it
        os.environ["TRANSFORMERS_VERBOSITY"] = "warning"
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator is found.*")
