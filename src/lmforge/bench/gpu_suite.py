"""`lmforge bench --suite gpu`: the GPU check, one command, no network. It builds a Qwen2-style model from a config
(about 0.5B parameters: Qwen2-0.5B's shape; `--smoke` takes a tiny one so the suite's logic runs on a CPU), and
measures and checks, writing `gpu_check.json` and `gpu_check.md` into `--output`:

- `matmul`: the bf16 (CPU: float32) matmul rate of the device, measured in this process;
- `sft`: full SFT (bf16 on a GPU) on packed rows of `cutoff_len` tokens: real tokens/s, MFU against that rate,
  peak memory;
- `losses`: the chunked loss against the model's own loss (and Liger's, where installed) on the same batch;
- `packing`: the loss of packed rows equals the loss of the same examples unpacked (within bf16 tolerance);
- `serve`: the serving engine's throughput at 1, 8 and 32 concurrent greedy requests, and 16 requests arriving at
  random with continuous vs static batching;
- `fsdp2`, `deepspeed`: a short run through `lmforge train` and its resume (skipped, with the reason, where they
  cannot run: no CUDA, package not installed);
- `vllm_rollouts`: three GRPO steps sampling with a colocated vLLM (sleep mode) and with the training model:
  rollout tokens/s of each (skipped without vLLM, which is too large to carry as a wheel);
- `tensor_parallel`, `context_parallel`, `sequence_parallel`: 2-way against one process (16k-token rows for the
  sequence splits): per-step losses within bf16 tolerance (skipped on a machine with one GPU; the CPU smoke run
  checks tensor parallelism over gloo);
- `vlm`: a tiny Qwen2-VL built from a config (3D rope positions; its processor needs torchvision, which the CPU
  machines lack): lmforge's ids for image conversations equal `processor.apply_chat_template(tokenize=True)`, no
  image token is trained, a LoRA SFT run lowers the loss, and the serving engine answers a request with an image
  as transformers' `generate` does;
- `plan`: `lmforge plan`'s peak against the measured one; `low_bit`: LoRA over torchao's int4 base against the bf16
  base; `fp8`: full fine-tuning with `fp8: true` against bf16 (tokens/s, peak memory, losses; float8 tensor cores);
- `reasoning_rl`: GRPO (REINFORCE++) and online DPO with the verifiable rewards, a few steps each;
- `prepared_data`: `lmforge data prepare` into a `tokenized_dir`, then `lmforge train` reading it (not the raw
  data); the seconds of each, of `lmforge --help` and of a config error.

Each check ends `pass`, `fail` (with the error) or `skip` (with the reason); one failing check does not stop the
others. `bench/gpu_check.sh` installs what the GPU image lacks from wheels carried beside it and runs this."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

QWEN2_05B = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
             "intermediate_size": 4864, "max_position_embeddings": 32768, "tie_word_embeddings": True,
             "vocab_size": 151936}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 1024, "tie_word_embeddings": True, "vocab_size": 2048}


class Suite:
    def __init__(self, output: str, smoke: bool, steps: int, cutoff_len: int):
        self.output, self.smoke, self.steps = output, smoke, steps
        self.cuda = torch.cuda.is_available()
        self.cutoff_len = cutoff_len
        self.results: dict[str, dict[str, Any]] = {}
        os.makedirs(output, exist_ok=True)
        self.model_dir = tempfile.mkdtemp(prefix="gpu-check-model-")  # ~1 GB at 0.5B: not in the output

    # ---- the model --------------------------------------------------------------------------------------------
    def build_model(self) -> str:
        """A Qwen2-style model from a config (no hub) with a byte-level BPE tokenizer trained on lmforge's own
        corpus, saved as a plain Hugging Face directory."""
        from transformers import AutoConfig, AutoModelForCausalLM

        from lmforge.data.chat_templates import apply_template_choice
        from lmforge.model.tokenizer import train_bpe_tokenizer
        from lmforge.resources import quickstart_corpus

        tokenizer = train_bpe_tokenizer(quickstart_corpus.generate(), 2048, ["<|endoftext|>", "<|im_start|>",
                                                                            "<|im_end|>"])
        apply_template_choice(tokenizer, "chatml")
        shape = dict(TINY if self.smoke else QWEN2_05B)
        config = AutoConfig.for_model("qwen2", **shape, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if self.cuda else torch.float32)
        model.save_pretrained(self.model_dir)
        tokenizer.save_pretrained(self.model_dir)
        return self.model_dir

    def sft_overrides(self, out: str, **extra: Any) -> list[str]:
        values = {"stage": "sft", "model_name_or_path": self.model_dir, "dataset": "lmforge_sft_quickstart",
                  "template": "chatml", "cutoff_len": self.cutoff_len, "packing": True, "output_dir": out,
                  "per_device_train_batch_size": 1 if self.smoke else 4, "learning_rate": 1e-5,
                  "bf16": self.cuda, "report_to": "none", "disable_tqdm": True, "seed": 0,
                  "dataloader_num_workers": 0, **extra}
        return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()
                if v is not None]  # None: the key is left out (e.g. no template for pretraining)

    # ---- the checks -------------------------------------------------------------------------------------------
    def check(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        started = time.perf_counter()
        try:
            result = fn()
            result.setdefault("status", "pass")
        except _Skip as skip:
            result = {"status": "skip", "reason": str(skip)}
        except Exception as err:  # noqa: BLE001 - a failing check is reported and the others still run
            result = {"status": "fail", "error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc(limit=6)}
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.results[name] = result
        print(f"[gpu check] {name}: {result['status']} {_brief(result)}", flush=True)

    def matmul(self) -> dict[str, Any]:
        from lmforge.bench.training import matmul_peak

        device = torch.device("cuda" if self.cuda else "cpu")
        dtype = torch.bfloat16 if self.cuda else torch.float32
        flops = matmul_peak(dtype, device, n=8192 if self.cuda else 1024)
        return {"dtype": str(dtype).removeprefix("torch."), "tflops": round(flops / 1e12, 2)}

    def sft(self) -> dict[str, Any]:
        from lmforge.bench.training import run

        result = run(None, self.sft_overrides(tempfile.mkdtemp(prefix="gpu-sft-")), self.steps, 2)
        keep = ("real_tokens_per_second", "fraction_of_peak", "peak_memory_gib", "time_to_first_step_s",
                "tokens_per_step", "matmul_peak_flops", "dtype")
        out = {k: result[k] for k in keep}
        out["mfu_vs_measured_matmul"] = round(result["fraction_of_peak"], 4)
        if self.cuda and not self.smoke and result["fraction_of_peak"] < 0.40:
            out["status"] = "fail"
            out["error"] = f"MFU {result['fraction_of_peak']:.1%} is below the 40 % target"
        return out

    @functools.cached_property
    def _examples(self) -> tuple[Any, int]:
        """16 encoded SFT examples (input_ids, labels) and the pad id, built once for the loss checks."""
        from lmforge.config.data import DataArguments
        from lmforge.data.examples import build_examples
        from lmforge.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.model_dir)
        data = build_examples(DataArguments(dataset="lmforge_sft_quickstart", cutoff_len=256, max_samples=16),
                              tokenizer, seed=0)
        return data.train.select_columns(["input_ids", "labels"]), tokenizer.pad_token_id

    def _batch(self, packed: bool):
        from lmforge.data.collate import SftCollator
        from lmforge.data.packing import pack_examples

        rows, pad_id = self._examples
        return SftCollator(pad_id)(list(pack_examples(rows, self.cutoff_len) if packed else rows))

    def _model(self, attn: str = "sdpa"):
        from transformers import AutoModelForCausalLM

        device = "cuda" if self.cuda else "cpu"
        dtype = torch.bfloat16 if self.cuda else torch.float32
        return AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype, attn_implementation=attn).to(device)

    def packing(self) -> dict[str, Any]:
        model = self._model().eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            unpacked = model(**_on(self._batch(False), device)).loss.float().item()
            packed = model(**_on(self._batch(True), device)).loss.float().item()
        tolerance = 2e-2 if self.cuda else 1e-4
        out = {"unpacked_loss": unpacked, "packed_loss": packed, "relative_difference": abs(packed - unpacked) /
               abs(unpacked), "tolerance": tolerance}
        if out["relative_difference"] > tolerance:
            out.update(status="fail", error="packed and unpacked losses differ")
        return out

    def losses(self) -> dict[str, Any]:
        from lmforge.model.chunked_loss import use_chunked_loss

        batch = self._batch(True)
        model = self._model().train()
        device = next(model.parameters()).device
        batch = _on(batch, device)
        with torch.no_grad():
            standard = model(**batch).loss.float().item()
            if not use_chunked_loss(model):
                raise _Skip("chunked loss not available for this architecture")
            chunked = model(**batch).loss.float().item()
        out = {"model_loss": standard, "chunked_loss": chunked}
        if importlib.util.find_spec("liger_kernel") is not None and self.cuda:
            from liger_kernel.transformers import apply_liger_kernel_to_qwen2

            apply_liger_kernel_to_qwen2()
            with torch.no_grad():
                out["liger_loss"] = self._model().train()(**batch).loss.float().item()
        else:
            out["liger"] = "skipped: liger_kernel not installed" if self.cuda else "skipped: needs CUDA"
        tolerance = 2e-2 if self.cuda else 1e-4
        if abs(chunked - standard) / abs(standard) > tolerance:
            out.update(status="fail", error="chunked loss differs from the model's loss")
        return out

    def serve(self) -> dict[str, Any]:
        from lmforge.data.template import prompt_ids, stop_token_ids
        from lmforge.model.tokenizer import load_tokenizer
        from lmforge.serve.engine import Engine
        tokenizer = load_tokenizer(self.model_dir)
        engine = Engine(self._model().eval(), tokenizer, stop_token_ids(tokenizer), max_batch_size=32)
        new_tokens = 16 if self.smoke else 128
        out: dict[str, Any] = {"max_tokens": new_tokens}
        try:
            for clients in (1, 8, 32):
                prompts = [prompt_ids(tokenizer, [{"role": "user", "content": f"Tell story {i}"}])
                           for i in range(clients)]
                out[f"tokens_per_second_{clients}"] = _throughput(engine, prompts, new_tokens)
            # 16 requests arriving at random: continuous batching vs static (newcomers wait for the batch)
            static = Engine(engine.model, tokenizer, sorted(engine.stop_ids), max_batch_size=32, continuous=False)
            try:
                gap = 0.002 if self.smoke else 0.05
                out["staggered_16_continuous"] = _throughput(engine, prompts[:16], new_tokens, gap)
                out["staggered_16_static"] = _throughput(static, prompts[:16], new_tokens, gap)
                out["staggered_16_ratio"] = round(out["staggered_16_continuous"] / out["staggered_16_static"], 2)
            finally:
                static.close()
        finally:
            engine.close()
        return out

    def distributed(self, engine: str) -> dict[str, Any]:
        if not self.cuda:
            raise _Skip(f"{engine} needs a CUDA GPU")
        if engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
            raise _Skip("deepspeed is not installed (not carried as a wheel)")
        out_dir = tempfile.mkdtemp(prefix=f"gpu-{engine}-")
        extra: dict[str, Any] = {"max_steps": 4, "save_steps": 2, "logging_steps": 1, "nproc_per_node": 1}
        if engine == "fsdp2":
            extra.update(fsdp="full_shard", fsdp_config={"fsdp_version": 2})
        else:
            extra["deepspeed"] = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "deepspeed",
                                              "ds_z3_config.json")
        first = self._train(self.sft_overrides(out_dir, **extra))
        resumed = self._train(self.sft_overrides(out_dir, **{**extra, "max_steps": 6},
                                                 resume_from_checkpoint=True))
        log = [json.loads(line) for line in open(os.path.join(out_dir, "trainer_log.jsonl"), encoding="utf-8")]
        steps = [r["step"] for r in log if "loss" in r]
        return {"first_run_seconds": first, "resumed_run_seconds": resumed, "logged_steps": steps,
                **({"status": "fail", "error": f"resume logged steps {steps}"} if steps != list(range(1, 7)) else {})}

    def vllm_rollouts(self) -> dict[str, Any]:
        """GRPO steps sampling with a colocated vLLM (sleep mode on) against the same steps sampling with the
        training model: rollout tokens/s of each, and the vLLM run's rewards are logged."""
        if not self.cuda:
            raise _Skip("vLLM rollouts need a CUDA GPU")
        if importlib.util.find_spec("vllm") is None:
            raise _Skip("vllm is not installed (too large to carry as a wheel)")
        out: dict[str, Any] = {}
        for backend, extra in (("hf", {}), ("vllm", {"rollout_backend": "vllm", "vllm_enable_sleep_mode": True,
                                                   "vllm_gpu_memory_utilization": 0.3})):
            out_dir = tempfile.mkdtemp(prefix=f"gpu-grpo-{backend}-")
            overrides = self.sft_overrides(
                out_dir, stage="grpo", packing=False, cutoff_len=256, reward_funcs="lmforge.rewards:token_f1",
                rollout_batch_size=8, num_generations=4, per_device_train_batch_size=8, max_new_tokens=64,
                max_steps=3, logging_steps=1, save_strategy="no", **extra)
            out[f"{backend}_seconds"] = self._train(overrides)
            log = [json.loads(line) for line in open(os.path.join(out_dir, "trainer_log.jsonl"), encoding="utf-8")]
            out[f"{backend}_rollout_tokens_per_second"] = round(
                sum(r["rollout_tokens_per_second"] for r in log) / len(log), 1)
        out["vllm_over_hf"] = round(out["vllm_rollout_tokens_per_second"] / out["hf_rollout_tokens_per_second"], 2)
        return out

    def model_parallel(self, key: str) -> dict[str, Any]:
        """2-way tensor/context/sequence parallelism against one process on the same rows (pretraining blocks of
        16k tokens for the sequence splits): per-step losses within bf16 tolerance, and the peak memory of each."""
        gpus = torch.cuda.device_count() if self.cuda else 0
        if not self.cuda and key != "tensor_parallel_size":
            raise _Skip(f"{key} needs CUDA GPUs")
        if self.cuda and gpus < 2:  # (tensor parallelism on the CPU runs over gloo: the smoke run checks it)
            raise _Skip(f"{key} = 2 needs 2 GPUs; this machine has {gpus}")
        if key == "sequence_parallel_size" and importlib.util.find_spec("deepspeed") is None:
            raise _Skip("sequence parallelism runs DeepSpeed Ulysses: deepspeed is not installed")
        long = key != "tensor_parallel_size"
        base = {"stage": "pt", "dataset": "lmforge_quickstart", "packing": False, "template": None,
                "cutoff_len": 16384 if long and not self.smoke else self.cutoff_len, "max_steps": 4,
                "save_strategy": "no", "logging_steps": 1, "per_device_train_batch_size": 1,
                "gradient_checkpointing": True, "attn_implementation": "sdpa", "skip_memory_metrics": False}
        if key == "sequence_parallel_size":
            base.update(attn_implementation="flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa",
                        deepspeed=os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples",
                                               "deepspeed", "ds_z3_config.json"))
        out, logs = self._compare_runs(key, {"one": {**base, "nproc_per_node": 1},
                                             "two": {**base, "nproc_per_node": 2, key: 2}})
        out["losses_one_process"], out["losses_two_way"] = logs["one"], logs["two"]
        return out

    def _compare_runs(self, prefix: str, runs: dict[str, dict[str, Any]],
                      tolerance: float = 0.02) -> tuple[dict[str, Any], dict]:
        """Train each of `runs` (sft overrides): its time, peak GPU memory (transformers' metrics of the first
        process) and tokens/s, and the worst relative difference of the per-step losses from the first run's,
        failed beyond `tolerance` (bf16's 2 %)."""
        out: dict[str, Any] = {}
        logs = {}
        for name, values in runs.items():
            out_dir = tempfile.mkdtemp(prefix=f"gpu-{prefix}-{name}-")
            out[f"{name}_seconds"] = self._train(self.sft_overrides(out_dir, **values))
            logs[name] = {r["step"]: r["loss"] for r in map(json.loads, open(os.path.join(
                out_dir, "trainer_log.jsonl"), encoding="utf-8")) if "loss" in r}
            with open(os.path.join(out_dir, "all_results.json"), encoding="utf-8") as fh:
                results = json.load(fh)
            peak = results.get("train_mem_gpu_alloc_delta", 0) + results.get("train_mem_gpu_peaked_delta", 0)
            out[f"{name}_peak_memory_gib"] = round(peak / 2**30, 2)
            out[f"{name}_tokens_per_second"] = round(results["num_input_tokens_seen"] / results["train_runtime"])
        first, *others = logs
        worst = max(abs(logs[first][s] - logs[o][s]) / abs(logs[first][s]) for o in others for s in logs[first])
        out["max_relative_loss_difference"] = round(worst, 5)
        if worst > tolerance:
            out.update(status="fail", error=f"losses differ from the '{first}' run by {worst:.2%} (allowed: "
                                            f"{tolerance:.0%})")
        return out, logs

    def low_bit(self) -> dict[str, Any]:
        """LoRA over the bf16 base against LoRA over torchao's int4 weight-only base (`quantization_method:
        torchao`, CUDA's tinygemm kernel): peak memory and tokens/s of each, losses within 10 % (the base's int4
        rounding). torchao's int8 is in the CPU test suite."""
        if not self.cuda:
            raise _Skip("torchao's int4 weight-only kernel runs on CUDA (int8 is tested on the CPU)")
        if importlib.util.find_spec("torchao") is None:
            raise _Skip("torchao is not installed (pip install torchao)")
        base = {"max_steps": 10, "save_strategy": "no", "logging_steps": 1, "finetuning_type": "lora",
                "lora_target": "all", "skip_memory_metrics": False}
        return self._compare_runs("low-bit", {"bf16_lora": base, "torchao_int4_lora": {
            **base, "quantization_bit": 4, "quantization_method": "torchao"}}, tolerance=0.10)[0]

    def fp8(self) -> dict[str, Any]:
        """Full fine-tuning in bf16 against the same run with `fp8: true` (torchao's float8 matmuls in the decoder):
        tokens/s and peak memory of each, losses within 5 %. Needs float8 tensor cores (compute capability 8.9); the
        CPU suite trains it emulated."""
        if not self.cuda:
            raise _Skip("float8 tensor cores are CUDA's (the CPU test suite trains fp8 emulated)")
        if torch.cuda.get_device_capability() < (8, 9):
            raise _Skip(f"{torch.cuda.get_device_name()} has no float8 tensor cores (compute capability < 8.9)")
        if importlib.util.find_spec("torchao") is None:
            raise _Skip("torchao is not installed (pip install torchao)")
        base = {"max_steps": 10, "save_strategy": "no", "logging_steps": 1, "finetuning_type": "full",
                "bf16": True, "skip_memory_metrics": False}
        return self._compare_runs("fp8", {"bf16_full": base, "fp8_full": {**base, "fp8": True}},
                                  tolerance=0.05)[0]

    def plan(self) -> dict[str, Any]:
        """`lmforge plan`'s peak for two steps of packed sft (every token trained) against the same run measured:
        MemTracker's peak over the real tensors (`memory_report`) and, on a GPU, the allocator's
        `max_memory_allocated`; within 10 % of the latter on a GPU, of the former on the CPU."""
        from lmforge.config import load_config
        from lmforge.train.plan.trace import trace_step

        out_dir = tempfile.mkdtemp(prefix="gpu-plan-")
        recipe = {"max_steps": 2, "save_strategy": "no", "packing": True, "train_on_prompt": True}
        self._train([*self.sft_overrides(out_dir, **recipe), "memory_report=true"])
        with open(os.path.join(out_dir, "memory_report.json"), encoding="utf-8") as fh:
            report = json.load(fh)
        planned = trace_step(load_config(None, self.sft_overrides(out_dir + "-plan", **recipe))).memory.total
        measured = report.get("max_memory_allocated") or report["peak_bytes"]["total"]
        allocated = report.get("max_memory_allocated")
        out = {"planned_gib": round(planned / 2**30, 3),
               "memtracker_gib": round(report["peak_bytes"]["total"] / 2**30, 3),
               "max_memory_allocated_gib": round(allocated / 2**30, 3) if allocated else None,
               "planned_over_measured": round(planned / measured, 4)}
        if abs(planned / measured - 1) > 0.10:
            out.update(status="fail", error=f"planned {planned / 2**30:.3f} GiB against {measured / 2**30:.3f} GiB "
                                            "measured (more than 10 % apart)")
        return out

    def expert_parallel(self) -> dict[str, Any]:
        """A Qwen3-MoE of about 0.7B parameters (the real family config, 32 experts of top-8 in 8 layers) on 2 GPUs:
        FSDP2 sharding alone against FSDP2 with the experts split (`expert_parallel_size: 2`), tokens/s and peak
        memory of each, per-step losses within bf16 tolerance."""
        from lmforge.bench.families import build_tiny
        from lmforge.bench.model_matrix import default_families_dir

        gpus = torch.cuda.device_count() if self.cuda else 0
        if gpus < 2:
            raise _Skip(f"expert_parallel_size = 2 needs 2 GPUs; this machine has {gpus} (the CPU suite checks it "
                        "over gloo)")
        source = os.path.join(default_families_dir(), "qwen3-moe")
        if not os.path.isdir(source):
            raise _Skip(f"no Qwen3-MoE family config at {source}")
        model = build_tiny(source, tempfile.mkdtemp(prefix="gpu-moe-"), sizes={
            "hidden_size": 1024, "intermediate_size": 2048, "moe_intermediate_size": 512, "num_experts": 32,
            "num_experts_per_tok": 8, "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4,
            "head_dim": 64})
        base = {"model_name_or_path": model, "max_steps": 6, "save_strategy": "no", "logging_steps": 1,
                "nproc_per_node": 2, "data_shard_size": 2, "router_aux_loss_coef": 0.001,
                "skip_memory_metrics": False}
        return self._compare_runs("ep", {"fsdp2": base, "expert_parallel": {**base, "expert_parallel_size": 2}})[0]

    def vlm(self) -> dict[str, Any]:
        if importlib.util.find_spec("torchvision") is None:
            raise _Skip("Qwen2-VL's processor needs torchvision (not installed here)")
        from lmforge.bench.vlm_check import run_vlm_check

        return run_vlm_check(tempfile.mkdtemp(prefix="gpu-vlm-"), self.cuda)

    def reasoning_rl(self) -> dict[str, Any]:
        """GRPO (REINFORCE++ advantages) and online DPO on the reasoning quickstart's problems with the verifiable
        rewards (`math_verify` in its worker processes, `format`), a few steps each: they run on this device, and
        how long a step takes. A random model earns little reward; the check is that the stages run."""
        result: dict[str, Any] = {}
        for stage, extra in (("grpo", {"num_generations": 4, "advantage_estimator": "reinforce_plus_plus_baseline",
                                       "kl_coef": 0.05}), ("online_dpo", {})):
            out = tempfile.mkdtemp(prefix=f"gpu-{stage}-")
            values = {"stage": stage, "model_name_or_path": self.model_dir, "output_dir": out,
                      "dataset": "lmforge_arithmetic",
                      "template": "chatml", "cutoff_len": 64, "max_new_tokens": 16 if self.smoke else 96,
                      "reward_funcs": "math_verify,format", "reward_weights": "1.0,0.2", "max_steps": self.steps,
                      "rollout_batch_size": 4 if self.smoke else 16, "per_device_train_batch_size": 4,
                      "learning_rate": 1e-5, "logging_steps": 1, "save_strategy": "no", "bf16": self.cuda,
                      "report_to": "none", "disable_tqdm": True, "seed": 0, "temperature": 1.0, **extra}
            seconds = self._train([f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()])
            with open(os.path.join(out, "trainer_log.jsonl"), encoding="utf-8") as fh:
                steps = [json.loads(line) for line in fh if '"reward"' in line]
            result[f"{stage}_seconds"] = seconds
            result[f"{stage}_steps"] = len(steps)
            result[f"{stage}_rollout_seconds"] = round(steps[-1].get("rollout_seconds", 0.0), 2) if steps else None
        return result

    def prepared_data(self) -> dict[str, Any]:
        """`lmforge data prepare` of the sft config into a `tokenized_dir` (as on a CPU node), then `lmforge train`
        from that folder: it must read the prepared examples (not tokenize) and train; the seconds of each, and of
        `lmforge --help` and a config error (neither imports the training libraries)."""
        work = tempfile.mkdtemp(prefix="gpu-prepared-")
        overrides = self.sft_overrides(os.path.join(work, "run"), max_steps=2, save_strategy="no",
                                       tokenized_dir=os.path.join(work, "prepared"))
        started = time.perf_counter()
        prepared = subprocess.run([sys.executable, "-m", "lmforge", "data", "prepare", *overrides],
                                  capture_output=True, text=True, timeout=900)
        if prepared.returncode != 0:
            raise RuntimeError(f"lmforge data prepare exited {prepared.returncode}: {prepared.stderr[-1500:]}")
        out = {"prepare_seconds": round(time.perf_counter() - started, 1)}
        started = time.perf_counter()
        trained = subprocess.run([sys.executable, "-m", "lmforge", "train", *overrides], capture_output=True,
                                 text=True, timeout=900)
        if trained.returncode != 0:
            raise RuntimeError(f"lmforge train exited {trained.returncode}: {trained.stderr[-1500:]}")
        out["train_seconds"] = round(time.perf_counter() - started, 1)
        if "Reading the prepared sft examples" not in trained.stderr:
            out.update(status="fail", error="lmforge train did not read the prepared examples")
        for name, argv in (("help", ["--help"]), ("config_error", ["train", "stage=sft", "learning_rat=1"])):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lmforge", *argv], capture_output=True, timeout=120)
            out[f"{name}_seconds"] = round(time.perf_counter() - started, 2)
        return out

    def _train(self, overrides: list[str]) -> float:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "lmforge", "train", *overrides], capture_output=True,
                                text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"lmforge train exited {result.returncode}: {result.stderr[-1500:]}")
        return round(time.perf_counter() - started, 1)

    # ---- the report -------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.check("build_model", lambda: {"model_dir": self.build_model(),
                                           "shape": "tiny (smoke)" if self.smoke else "Qwen2-0.5B"})
        self.check("matmul", self.matmul)
        self.check("sft", self.sft)
        self.check("losses", self.losses)
        self.check("packing", self.packing)
        self.check("serve", self.serve)
        self.check("fsdp2", lambda: self.distributed("fsdp2"))
        self.check("deepspeed", lambda: self.distributed("deepspeed"))
        self.check("vlm", self.vlm)
        self.check("vllm_rollouts", self.vllm_rollouts)
        for key in ("tensor_parallel_size", "context_parallel_size", "sequence_parallel_size"):
            self.check(key.removesuffix("_size"), functools.partial(self.model_parallel, key))
        self.check("expert_parallel", self.expert_parallel)
        self.check("plan", self.plan)
        self.check("low_bit", self.low_bit)
        self.check("fp8", self.fp8)
        self.check("reasoning_rl", self.reasoning_rl)
        self.check("prepared_data", self.prepared_data)
        device = torch.cuda.get_device_name(0) if self.cuda else "cpu"
        report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device, "torch": torch.__version__,
                  "smoke": self.smoke, "checks": self.results,
                  "failed": [n for n, r in self.results.items() if r["status"] == "fail"]}
        with open(os.path.join(self.output, "gpu_check.json"), "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1, default=str)
        with open(os.path.join(self.output, "gpu_check.md"), "w", encoding="utf-8") as fh:
            fh.write(table(report))
        return report


class _Skip(Exception):
    pass


def _throughput(engine: Any, prompts: list[list[int]], new_tokens: int, mean_gap: float = 0.0) -> float:
    """Completion tokens per second of greedy requests submitted together, or `mean_gap` seconds apart on average
    (exponential gaps, fixed seed)."""
    from lmforge.model.sampling import SamplingParams

    done = threading.Semaphore(0)
    tokens = [0] * len(prompts)

    def sink(i: int) -> Callable:
        def put(event: Any) -> None:
            if event.finish_reason:
                tokens[i] = event.completion_tokens
                done.release()
        return put

    gaps = random.Random(0)
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        if i and mean_gap:
            time.sleep(gaps.expovariate(1 / mean_gap))
        engine.submit(prompt, SamplingParams(max_tokens=new_tokens, temperature=0.0), sink(i))
    for _ in prompts:
        done.acquire()
    return round(sum(tokens) / (time.perf_counter() - started), 1)


def _on(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _brief(result: dict[str, Any]) -> str:
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()
             if k not in ("status", "traceback", "model_dir")}
    return ", ".join(f"{k}={v}" for k, v in shown.items())[:400]


def table(report: dict[str, Any]) -> str:
    lines = [f"GPU check, {report['date']}, {report['device']} (torch {report['torch']})", "",
             "| check | status | figures |", "|---|---|---|"]
    for name, result in report["checks"].items():
        lines.append(f"| {name} | {result['status']} | {_brief(result).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def run_suite(output: str, smoke: bool = False, steps: int = 10, cutoff_len: int | None = None) -> dict[str, Any]:
    return Suite(output, smoke, steps, cutoff_len or (256 if smoke else 4096)).run()
