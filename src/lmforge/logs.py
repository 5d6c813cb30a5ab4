"""Console logging for the CLI: lmforge's messages at INFO, libraries quieter."""

from __future__ import annotations

import logging
import os
import warnings


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose or os.environ.get("LMFORGE_DEBUG") else logging.INFO
    logging.basicConfig(format="[lmforge] %(message)s", level=logging.WARNING, force=True)
    logging.getLogger("lmforge").setLevel(level)
    import transformers

    transformers.logging.set_verbosity_warning()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator is found.*")
