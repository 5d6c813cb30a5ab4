"""Console logging for the CLI: lmforge's messages at INFO, libraries quieter."""

from __future__ import annotations

import logging
import os
import sys
import warnings

_HANDLER_NAME = "lmforge-console"


def setup_logging(verbose: bool = False) -> None:
    """A console handler on the `lmforge` logger only (the root logger, and whatever the host program or pytest
    attached to it, is left alone)."""
    logger = logging.getLogger("lmforge")
    logger.setLevel(logging.DEBUG if verbose or os.environ.get("LMFORGE_DEBUG") else logging.INFO)
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("[lmforge] %(message)s"))
        logger.addHandler(handler)
    import transformers

    transformers.logging.set_verbosity_warning()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator is found.*")
