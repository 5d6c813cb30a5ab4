"""`lmforge rollout-server MODEL`: the vLLM server that `vllm_mode: server` rollouts sample from.

It is vLLM's own OpenAI-compatible server started as TRL's trainers expect it (TRL builds the command line: NCCL
weight-transfer engine, processed log-probabilities, the development endpoints that take weights and reset the
prefix cache), so the training processes push the policy's weights to it after every update and send prompts over
HTTP. Run it on GPUs the training does not use, e.g. `CUDA_VISIBLE_DEVICES=7 lmforge rollout-server MODEL port=8000`.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys

from lmforge.config.schema import ServeConfig
from lmforge.errors import ConfigError


def rollout_server_command(cfg: ServeConfig) -> list[str]:
    """The `vllm serve` command line (python -m vllm.entrypoints.cli.main serve ...) for `cfg`."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    s = cfg.serve
    args = ScriptArguments(model=cfg.model.model_name_or_path, host=s.host, port=s.port or 8000,
                           gpu_memory_utilization=s.vllm_gpu_memory_utilization, max_model_len=s.max_model_len,
                           trust_remote_code=cfg.model.trust_remote_code)
    return build_command(args)


def run_rollout_server(cfg: ServeConfig) -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("Config error: `lmforge rollout-server` runs vLLM's server and needs vLLM installed "
                          "(`pip install vllm`, CUDA GPUs only).")
    if cfg.model.adapter_name_or_path:
        raise ConfigError("Config error: 'adapter_name_or_path' does not apply to `lmforge rollout-server`: serve the "
                          "base model; the training run pushes its merged weights after every update.")
    command = rollout_server_command(cfg)
    print("lmforge rollout-server: " + shlex.join(["vllm", *command[command.index("serve"):]]), file=sys.stderr)
    os.execve(sys.executable, command, {**os.environ, "VLLM_SERVER_DEV_MODE": "1"})
