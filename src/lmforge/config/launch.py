"""How many processes `lmforge train` runs on, and where (it launches itself under torchrun when asked)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config.fields import option
from lmforge.errors import ConfigError


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


def from_env(value: Any, name: str, kind: type, default: Any) -> Any:
    """A launch key's value, else its environment variable ($NPROC_PER_NODE, $NNODES, ...), else `default`."""
    if value is not None:
        return value
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    if kind is int and raw != "auto":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"Config error (environment): ${name} must be a whole number, got '{raw}'.") from None
    return raw


def planned_processes(args: LaunchArguments) -> tuple[int, int]:
    """(processes per machine, machines) the launch keys ask for (`auto`: one per visible GPU)."""
    nproc = from_env(args.nproc_per_node, "NPROC_PER_NODE", int, 1)
    if nproc == "auto":
        from lmforge.device import gpu_count

        nproc = max(gpu_count(), 1)
    return nproc, from_env(args.nnodes, "NNODES", int, 1)


def process_count(args: LaunchArguments) -> int:
    """The processes of the run: the launcher's WORLD_SIZE inside a launched process, else what the launch keys (or
    their environment variables) ask for, counted as `lmforge train` will launch them."""
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    per_node, nodes = planned_processes(args)
    return per_node * nodes
