"""How many processes `lmforge train` runs on, and where (it launches itself under torchrun when asked)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option


@dataclass
class LaunchArguments:
    nproc_per_node: int | Literal["auto"] | None = option(
        None, "Training processes on this machine (one per GPU); above 1, `lmforge train` launches itself under "
        "torchrun. `auto`: one per visible GPU. Unset: $NPROC_PER_NODE, else 1. Ignored when already started by "
        "torchrun, accelerate or deepspeed.")
    nnodes: int | None = option(None, "Machines taking part (multi-node training). Unset: $NNODES, else 1.")
    node_rank: int | None = option(None, "This machine's index among `nnodes` (0 on the master). Unset: $NODE_RANK, "
                                   "else 0.")
    master_addr: str | None = option(
        None, "Address of machine 0, which every machine can reach (multi-node). Unset: $MASTER_ADDR.")
    master_port: int | None = option(
        None, "Free port on machine 0 for the rendezvous. Unset: $MASTER_PORT, else 29500 (multi-node) or a free "
        "port chosen by torchrun (one machine).")
