"""`lmforge bench`: the benchmarks, in one package. `training` times a training config (tokens/s, FLOP/s, memory;
`--compare` against the common way, `--packing-compare`); `preprocess` times data encoding (`--preprocess`);
`eval_prefix` times multiple-choice evaluation with and without prefix KV reuse (`--eval-prefix-compare`)."""

from lmforge.bench.command import main

__all__ = ["main"]
