"""`lmforge bench CONFIG [key=value ...]`: measure a training config's real speed and memory.

Runs `--warmup` steps, then times `--steps` steps of the same recipe `lmforge train` uses, and reports real (non-pad)
tokens/s, achieved FLOP/s (6 * params * tokens + attention), the fraction of the device's matmul peak measured in
the same process, peak memory and time to first step. `--compare` also trains the common way (transformers' Trainer,
per-batch padding, full-logit loss) in the same process and prints the ratios; `--preprocess` measures encoding.
Never a timed test: run it and read it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import tempfile
import threading
import time
from collections.abc import Callable

import torch
from transformers import TrainerCallback

from lmforge.config import load_config
from lmforge.data.collate import IGNORE_INDEX
from lmforge.data.packing import uses_packing
from lmforge.errors import ConfigError


class TokenCounter:
    """Wraps a collator and counts the real (example) tokens and the padded (tensor) tokens of every batch."""

    def __init__(self, collate) -> None:
        self.collate = collate
        self.real = 0
        self.padded = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        self.real += sum(len(f["input_ids"]) for f in features)
        self.padded += batch["input_ids"].numel()
        return batch


class StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step, and the real and padded tokens collated by then."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.times: list[float] = []
        self.real: list[int] = []
        self.padded: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.real.append(self.counter.real)
        self.padded.append(self.counter.padded)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Achievable FLOP/s of a large square matmul on this device (the denominator of utilisation)."""
    if device.type == "cpu":
        n = 1024  # large enough to saturate the cores, small enough to measure quickly
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 * matmul parameters (the input embedding is a lookup) + 12 * layers * seq * d_attn
    for the attention scores and weighted sum (forward + backward, as in the PaLM paper's appendix B)."""
    from lmforge.model.build import count_parameters

    params, _ = count_parameters(model)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is not emb.weight:
        params -= emb.weight.numel()
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", 0)
    heads = getattr(cfg, "num_attention_heads", 0)
    head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // heads if heads else 0)
    return 6 * params + 12 * layers * seq_len * heads * head_dim


class MemoryWatch:
    """Peak memory while training: on a GPU `max_memory_allocated`; on the CPU the resident set size sampled every
    2 ms by a thread, reported above its level when the watch starts (so two runs in one process are compared on
    what each one adds: activations, logits, gradients, optimizer state)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self.start = device, 0, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> MemoryWatch:
        gc.collect()
        _return_freed_memory()  # what an earlier run freed must not hide what this one allocates
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self.start = self.peak = self.rss()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, self.rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss()) - self.start


def _return_freed_memory() -> None:
    """glibc keeps freed heap memory in the process (RSS stays high); give it back to the system."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def build_trainer(cfg):
    """The stage's own Trainer, from the stage registry."""
    from lmforge.train import stage_trainer_builder

    stage = cfg.finetuning.stage
    builder = stage_trainer_builder(stage)
    if builder is None:
        raise ConfigError(f"Config error: `lmforge bench` times stages built on a Trainer; 'stage: {stage}' runs "
                          "its own rollout-and-update loop (its trainer_log.jsonl has its step times).")
    built = builder(cfg)
    return getattr(built, "trainer", built)  # sft's builder returns the trainer with its setup


def build_baseline(cfg):
    """The common way to train the same config: transformers' Trainer, examples padded to the longest in each batch
    (DataCollatorForSeq2Seq), the model's own loss over full logits; same model, data and arguments."""
    from transformers import DataCollatorForSeq2Seq, Trainer

    if cfg.finetuning.stage not in ("pt", "sft"):
        raise ConfigError(f"Config error: `--compare` measures the language-modelling stages (pt, sft), not "
                          f"'stage: {cfg.finetuning.stage}'.")

    if cfg.finetuning.stage == "sft":
        from lmforge.train.shared_setup import policy_model, prepare_chat_stage

        stage = prepare_chat_stage(cfg)
        rows = stage.data.train.select_columns(["input_ids", "labels"])
        collator = DataCollatorForSeq2Seq(stage.tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
        return Trainer(model=policy_model(cfg, stage), args=cfg.training, train_dataset=rows,
                       data_collator=collator, processing_class=stage.tokenizer)
    from lmforge.train.stages.pt import build_trainer as build_pt

    ours = build_pt(dataclasses.replace(cfg, finetuning=dataclasses.replace(cfg.finetuning, chunked_loss=False)))
    return Trainer(model=ours.model, args=cfg.training, train_dataset=ours.train_dataset,
                   data_collator=ours.data_collator, processing_class=ours.processing_class)


def bench_config(config: str | None, overrides: list[str], steps: int, warmup: int):
    out = tempfile.mkdtemp(prefix="lmforge-bench-")
    forced = [f"max_steps={warmup + steps}", "eval_strategy=no", "save_strategy=no", "report_to=none",
              "logging_steps=1000000", "val_size=0", "eval_dataset=null", "sample_prompts=[]", "plot_loss=false",
              "include_num_input_tokens_seen=all", "disable_tqdm=true"]
    return load_config(config, [f"output_dir={out}", *overrides, *forced])


def measure(trainer, cfg, config: str | None, steps: int, warmup: int, started: float) -> dict:
    """Train `warmup + steps` steps with `trainer` and report the timed steps."""
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    clock = StepClock(counter)
    trainer.add_callback(clock)
    device = trainer.args.device
    with MemoryWatch(device) as memory:
        trainer.train()

    if len(clock.times) <= warmup:
        raise ConfigError("Config error: the run ended before the timed steps (dataset too small for "
                          f"{warmup + steps} steps?).")
    elapsed = clock.times[-1] - clock.times[warmup - 1] if warmup else clock.times[-1] - started
    real = clock.real[-1] - (clock.real[warmup - 1] if warmup else 0)
    padded = clock.padded[-1] - (clock.padded[warmup - 1] if warmup else 0)
    per_token = flops_per_token(trainer.model, cfg.data.cutoff_len)
    dtype = torch.bfloat16 if cfg.training.bf16 else torch.float16 if cfg.training.fp16 else torch.float32
    peak = matmul_peak(dtype, device)
    achieved = per_token * real / elapsed  # FLOPs spent on padding are not useful work
    return {
        "config": config, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "timed_steps": len(clock.times) - warmup, "warmup_steps": warmup,
        "stage": cfg.finetuning.stage, "packing": uses_packing(cfg.data),
        "tokens_per_step": padded / max(len(clock.times) - warmup, 1),
        "real_tokens_per_second": real / elapsed, "padded_tokens_per_second": padded / elapsed,
        "flops_per_token": per_token, "achieved_flops": achieved, "matmul_peak_flops": peak,
        "fraction_of_peak": achieved / peak,
        "peak_memory_gib": memory.peak / 2**30,
        "time_to_first_step_s": clock.times[0] - started,
    }


def run(config: str | None, overrides: list[str], steps: int, warmup: int) -> dict:
    started = time.perf_counter()
    cfg = bench_config(config, overrides, steps, warmup)
    return measure(build_trainer(cfg), cfg, config, steps, warmup, started)


def compare_runs(runs: dict[str, tuple[Callable, list[str]]], config: str | None, overrides: list[str], steps: int,
                 warmup: int, repeats: int = 1) -> dict:
    """Measure several ways of running one config in this process: `runs` maps a name to (trainer builder, extra
    overrides); the first is the candidate, the last the reference. With `repeats` > 1 the runs alternate in order (a
    later run in a process tends to be slower) and each keeps its fastest run. Ratios are candidate / reference."""
    results: dict[str, dict] = {}
    names = list(runs)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            build, extra = runs[name]
            started = time.perf_counter()
            cfg = bench_config(config, [*overrides, *extra], steps, warmup)
            r = measure(build(cfg), cfg, config, steps, warmup, started)
            if name not in results or r["real_tokens_per_second"] > results[name]["real_tokens_per_second"]:
                results[name] = r
            gc.collect()
    candidate, reference = names[0], names[-1]
    ours, base = results[candidate], results[reference]
    for name in names:
        print(f"[{name}]\n{report(results[name])}\n")
    ratios = {key: ours[key] / base[key] for key in ("real_tokens_per_second", "peak_memory_gib", "fraction_of_peak")
              if base[key]}
    print(f"{candidate} / {reference}: real tokens/s x{ratios['real_tokens_per_second']:.2f}, "
          f"peak memory x{ratios.get('peak_memory_gib', float('nan')):.2f}, fraction of peak "
          f"{100 * base['fraction_of_peak']:.1f} % -> {100 * ours['fraction_of_peak']:.1f} %, padding share of "
          f"{reference} {100 * (1 - base['real_tokens_per_second'] / base['padded_tokens_per_second']):.0f} %")
    return {**results, "ratios": ratios}


def compare_baseline(config: str | None, overrides: list[str], steps: int, warmup: int, repeats: int = 1) -> dict:
    """lmforge's recipe against the common way (`build_baseline`) for the same config."""
    result = compare_runs({"lmforge": (build_trainer, []), "baseline": (build_baseline, [])}, config, overrides,
                          steps, warmup, repeats)
    result["baseline"]["packing"] = False  # the baseline pads whatever the config says
    return result


def compare_packing(config: str | None, overrides: list[str], steps: int, warmup: int, repeats: int = 1) -> dict:
    """The same config packed and padded per batch."""
    return compare_runs({"packed": (build_trainer, ["packing=true"]), "padded": (build_trainer, ["packing=false"])},
                        config, overrides, steps, warmup, repeats)


def report(r: dict) -> str:
    return "\n".join([
        f"lmforge bench — {r['config']} on {r['device']} ({r['dtype']})",
        f"  timed steps            {r['timed_steps']} (after {r['warmup_steps']} warm-up)",
        f"  real tokens/s          {r['real_tokens_per_second']:,.0f}",
        f"  padded tokens/s        {r['padded_tokens_per_second']:,.0f}",
        f"  achieved FLOP/s        {r['achieved_flops'] / 1e9:,.2f} GFLOP/s "
        f"({r['flops_per_token'] / 1e6:,.1f} MFLOP/token)",
        f"  matmul peak (measured) {r['matmul_peak_flops'] / 1e9:,.2f} GFLOP/s",
        f"  fraction of peak       {100 * r['fraction_of_peak']:.1f} %",
        f"  peak memory            {r['peak_memory_gib']:.2f} GiB "
        f"({'max allocated' if 'cuda' in r['device'] else 'RSS above the start of training'})",
        f"  time to first step     {r['time_to_first_step_s']:.1f} s",
    ])
