"""lmforge: one framework for the whole life of a language model."""

from lmforge.logs import quiet_import_notices

__version__ = "0.1.0"

quiet_import_notices()  # optional kernels a library logs as missing at import (torchao's CUDA ones on a CPU)
