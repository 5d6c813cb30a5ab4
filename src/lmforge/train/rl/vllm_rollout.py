"""`rollout_backend: vllm`: completions sampled by vLLM, which gets the policy's weights after every update.

- `vllm_mode: colocate`: one `vllm.LLM` in each training process, on its GPU (`distributed_executor_backend:
  external_launcher`: the processes torchrun started are vLLM's too). With `vllm_enable_sleep_mode` it sleeps
  (weights and KV cache released) while the policy is updated; its weights come back with the next sync.
- `vllm_mode: server`: `lmforge rollout-server MODEL` (vLLM's own OpenAI server with its NCCL weight-transfer
  engine) on other GPUs; prompts go over HTTP through TRL's `VLLMClient`, and the first process pushes the weights
  over NCCL.

Whatever samples, the loop scores the tokens with the training model (old and reference log-probabilities), so the
update is the same as with `rollout_backend: hf`. Colocated engines draw each completion with its own seed, as the
hf backend does; the server draws a prompt's group with its own generator.

Why the weights are merged here and not by `merge_adapter`: merging into the training weights and unmerging after
the push leaves them changed by rounding at every step; the merged tensors are computed aside instead.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import torch

from lmforge.config.schema import RunConfig
from lmforge.errors import ConfigError
from lmforge.train.rl.distributed import barrier, is_sharded

logger = logging.getLogger(__name__)

_MODULES_TO_SAVE = re.compile(r"\.modules_to_save\.[^.]+\.")


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter FSDP2 shards (`data_shard_size`), gathered whole (every process takes part)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the plain model's parameter names (what vLLM's `load_weights` takes); for a LoRA
    model, each adapted weight with the adapter's update added, the model itself left as it is."""
    if not hasattr(model, "peft_config"):
        for name, param in model.named_parameters():
            yield name, _full(param.detach())
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    lora_layers = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    if any(type(module).__name__ == "ParamWrapper" for module in lora_layers.values()):
        raise ConfigError("Config error: vLLM rollouts take merged linear weights; LoRA on a mixture of experts' "
                          "fused expert weights (`lora_target: all` or `experts`) is not merged for them. Name the "
                          "linear layers in `lora_target` (e.g. `q_proj,k_proj,v_proj,o_proj`), or roll out with "
                          "`infer_backend: hf`.")
    for name, param in base.named_parameters():
        parts = name.split(".")
        if any(part.startswith("lora_") for part in parts) or "original_module" in parts:
            continue  # the adapter's own matrices (added below), the frozen copy of a trained module
        owner, _, leaf = name.rpartition(".")
        if owner.endswith("base_layer") and owner.removesuffix(".base_layer") in lora_layers:
            layer_name = owner.removesuffix(".base_layer")
            layer = lora_layers[layer_name]
            tensor = _full(param.detach())
            if leaf == "weight" and not layer.merged:
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A or adapter in getattr(layer, "lora_embedding_A", {}):
                        tensor = tensor + layer.get_delta_weight(adapter).to(tensor.dtype)
            yield f"{layer_name}.{leaf}", tensor
        else:
            yield _MODULES_TO_SAVE.sub(".", name), _full(param.detach())


def _default_max_model_len(cfg: RunConfig) -> int:
    return cfg.rl.vllm_max_model_len or cfg.data.cutoff_len + cfg.generation.max_new_tokens


class VLLMRollouts:
    """The vLLM engine of a run (colocated or behind a server), kept in step with the policy's weights."""

    def __init__(self, cfg: RunConfig, policy: torch.nn.Module, model_path: str, rank: int, world_size: int):
        self.cfg, self.policy, self.mode = cfg, policy, cfg.rl.vllm_mode
        self.rank = rank
        self.stale = True  # the engine's weights are not the policy's (until the first sync)
        self.sleeping = False
        self.llm: Any = None
        self.client: Any = None
        if self.mode == "colocate":
            self._start_colocated(model_path, world_size)
        else:
            from trl.generation.vllm_client import VLLMClient

            self.client = VLLMClient(base_url=cfg.rl.vllm_server_base_url, group_port=cfg.rl.vllm_group_port,
                                     connection_timeout=cfg.rl.vllm_server_timeout)
            if rank == 0:  # the weight push: the first process joins the server's NCCL group
                self.client.init_communicator(device=torch.cuda.current_device())
        self._metadata: list[tuple[str, str, list[int]]] | None = None

    def _start_colocated(self, model_path: str, world_size: int) -> None:
        from vllm import LLM

        # vLLM's external launcher reads the torchrun environment; a single process has none
        os.environ.setdefault("RANK", str(self.rank))
        os.environ.setdefault("LOCAL_RANK", str(self.rank))
        os.environ.setdefault("WORLD_SIZE", str(world_size))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        rl = self.cfg.rl
        self.llm = LLM(model=model_path, tensor_parallel_size=1, gpu_memory_utilization=rl.vllm_gpu_memory_utilization,
                       max_model_len=_default_max_model_len(self.cfg), enable_sleep_mode=rl.vllm_enable_sleep_mode,
                       distributed_executor_backend="external_launcher", seed=self.cfg.training.seed + self.rank,
                       trust_remote_code=self.cfg.model.trust_remote_code, max_num_batched_tokens=4096)
        if rl.vllm_enable_sleep_mode:
            self.llm.sleep(level=2)  # level 2 drops the weights: the first rollout's sync brings the policy's
            self.sleeping = True

    # ---- weights ----------------------------------------------------------------------------------------------
    def sync(self) -> None:
        """The policy's current weights into the engine (every process takes part: with several processes each
        colocated engine loads its own process's copy; for a server the first process pushes)."""
        if self.mode == "colocate":
            if self.sleeping:
                torch.cuda.empty_cache()
                self.llm.wake_up(tags=["weights"])
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.model.load_weights(merged_weights(self.policy))
            self.llm.reset_prefix_cache()
        elif self.rank == 0 or any(is_sharded(p) for p in self.policy.parameters()):
            # the first process pushes; a sharded policy is gathered by every process, so all walk the weights
            if self._metadata is None:
                self._metadata = [(n, str(t.dtype).removeprefix("torch."), list(t.shape))
                                  for n, t in merged_weights(self.policy)]
            if self.rank == 0:
                self.client.update_named_params(self._metadata, merged_weights(self.policy))
                self.client.reset_prefix_cache()
            else:
                for _ in merged_weights(self.policy):
                    pass
        self.stale = False

    # ---- sampling ---------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], group: int, stop_ids: list[int], seeds: list[int]
                 ) -> list[list[int]]:
        """One completion per row of `prompts` (rows come in runs of `group` copies of a prompt)."""
        if self.stale:
            self.sync()
            barrier()  # no process samples from a server before the weights are there
        gen = self.cfg.generation
        temperature = gen.temperature if gen.do_sample else 0.0
        # top_k -1 is "no limit" in every vLLM release (some refuse lmforge's and transformers' 0)
        if self.mode == "colocate":
            from vllm import SamplingParams

            if self.sleeping:
                self.llm.wake_up(tags=["kv_cache"])
            params = [SamplingParams(n=1, temperature=temperature, top_p=gen.top_p, top_k=gen.top_k or -1,
                                     repetition_penalty=gen.repetition_penalty, max_tokens=gen.max_new_tokens,
                                     stop_token_ids=list(stop_ids), seed=seed) for seed in seeds]
            outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], sampling_params=params,
                                        use_tqdm=False)
            if self.cfg.rl.vllm_enable_sleep_mode:
                self.llm.sleep(level=2)
                self.sleeping, self.stale = True, True
            return [list(o.outputs[0].token_ids) for o in outputs]
        # server: each process asks for its own rows; a prompt's group is one request of n completions
        out = self.client.generate(prompts=[list(p) for p in prompts[::group]], n=group, temperature=temperature,
                                   top_p=gen.top_p, top_k=gen.top_k or -1, repetition_penalty=gen.repetition_penalty,
                                   max_tokens=gen.max_new_tokens, logprobs=None,
                                   generation_kwargs={"stop_token_ids": list(stop_ids)})
        return [list(ids) for ids in out["completion_ids"]]

    def updated(self) -> None:
        """The policy changed (an optimizer step): the next rollout syncs first."""
        self.stale = True
