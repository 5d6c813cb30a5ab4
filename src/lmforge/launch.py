"""`lmforge train` on several processes: relaunch the same command under torchrun when the config asks for it.

Under an external launcher (torchrun, `accelerate launch`, `deepspeed`) the process already has a rank and runs as
it is; the Trainer (accelerate) forms the process group from the environment: NCCL on GPUs, gloo on the CPU."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from lmforge.config.launch import LaunchArguments, from_env, planned_processes
from lmforge.errors import ConfigError

logger = logging.getLogger(__name__)

# Seconds torchrun waits, after forwarding SIGTERM/SIGINT, for the workers to save their checkpoint before it
# kills them (its own default, 30 s, is shorter than saving a large model takes).
SHUTDOWN_TIMEOUT_S = 1800
DEFAULT_MASTER_PORT = 29500


def launched() -> bool:
    """True inside a process started by a distributed launcher (it has a rank)."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def torchrun_command(args: LaunchArguments, argv: list[str]) -> list[str] | None:
    """The torchrun command line that runs `lmforge train argv` on the processes asked for, or None to run in this
    process (one process, or already launched)."""
    if launched():
        return None
    nproc, nnodes = planned_processes(args)
    node_rank = from_env(args.node_rank, "NODE_RANK", int, 0)
    master_addr = from_env(args.master_addr, "MASTER_ADDR", str, None)
    master_port = from_env(args.master_port, "MASTER_PORT", int, None)
    if nproc < 1 or nnodes < 1:
        raise ConfigError(f"Config error: 'nproc_per_node' and 'nnodes' must be at least 1, got {nproc} and {nnodes}.")
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"Config error: 'node_rank' must be in 0..{nnodes - 1} (nnodes={nnodes}), got {node_rank}.")
    if nproc == 1 and nnodes == 1:
        return None
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}",
               f"--shutdown_timeout={SHUTDOWN_TIMEOUT_S}"]
    if nnodes > 1:
        if not master_addr:
            raise ConfigError("Config error: multi-node training (nnodes > 1) needs 'master_addr' (or $MASTER_ADDR): "
                              "the address of machine 0, reachable from every machine.")
        command += [f"--node_rank={node_rank}", f"--master_addr={master_addr}",
                    f"--master_port={master_port or DEFAULT_MASTER_PORT}"]
    elif master_port:
        command += [f"--master_addr={master_addr or '127.0.0.1'}", f"--master_port={master_port}"]
    else:
        command.append("--standalone")  # one machine: torchrun picks a free port
    return [*command, "-m", "lmforge", "train", *argv]


def run_launcher(command: list[str]) -> int:
    """Run torchrun as a child and wait for it; returns its exit status.

    Why not exec torchrun: on SIGTERM/SIGINT torchrun forwards the signal to the workers and then reports failure
    (a traceback and exit 1) even when every worker saved its checkpoint and exited 0. Here torchrun is started in
    its own session (Ctrl-C reaches only this process), and a signal is forwarded straight to the workers, which
    stop after saving; torchrun then sees them finish and exits 0 like a completed run."""
    logger.info("Launching: %s", " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)

    def forward(signum: int, frame) -> None:
        for pid in _children(proc.pid) or [proc.pid]:  # no workers yet: torchrun itself stops the launch
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code if code >= 0 else 128 - code


def _children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc); empty where that cannot be read."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                children += [int(p) for p in fh.read().split()]
    except OSError:
        return []
    return children


def _die_with_parent() -> None:
    """torchrun gets SIGTERM if this launcher dies (Linux), so killing the launcher never orphans a training."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
