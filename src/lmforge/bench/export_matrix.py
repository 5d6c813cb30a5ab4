"""Every deployable format on every causal real family (`lmforge bench --suite export`): a tiny model of each family's
real config and tokenizer, made 256 wide so that llama.cpp's 256-weight k-quant blocks divide its rows, exported by
`lmforge export` and measured the way llama.cpp's `llama-perplexity --kl-divergence` measures a quantization: size
against f16, perplexity on held-out text, the mean KL divergence of each token's next-token distribution from the
f16 file's, and how often both pick the same top token. GGUF files run in llama.cpp (llama-cpp-python);
compressed-tensors checkpoints (`export_quantization`) in transformers against the unquantized model.

The random weights are first trained for TRAIN_STEPS steps on alpaca answers, so that the model predicts something and
a format's rounding shows in its perplexity; a model this small and this briefly trained is not a released one, so
the figures compare formats with each other, not with published ones. `table` writes the results as
docs/export-matrix.md."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from lmforge.bench.families import FamilyUnavailable, build_tiny, discover

logger = logging.getLogger(__name__)

WIDE = {"hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 256, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64}
GGUF_FORMATS = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_k_m+imatrix", "iq4_xs", "iq4_xs+imatrix")
SERVING_FORMATS = ("int8", "int4", "gptq")
HELD_OUT, CALIBRATION = 16, 64
TRAIN_STEPS = 100  # alpaca_en_demo: the last records are scored, the first ones calibrate
PROMPTS = ("The capital of France is", "def fibonacci(n):", "你好，世界")


def run_export_matrix(families_dir: str, work: str, data_dir: str, only: list[str] | None = None) -> dict:
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for family in discover(families_dir):
        if not family.causal or (only and family.name not in only):
            continue
        try:
            results[family.name] = _family(family, Path(work) / family.name, Path(data_dir))
        except FamilyUnavailable as err:
            results[family.name] = {"skipped": str(err)}
        logger.info("%s: %s", family.name, json.dumps(results[family.name]))
    return {"results": results, "seconds": round(time.perf_counter() - started)}


def _family(family, root: Path, data_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.config.parse import load_target_config
    from lmforge.errors import ConfigError
    from lmforge.export.gguf_convert import convert_to_gguf, tensor_names
    from lmforge.export.gguf_imatrix import importance_matrix
    from lmforge.export.gguf_quantize import quantize_gguf
    from lmforge.export.run import run_export

    model_dir = build_tiny(family.source, root / "model", sizes=WIDE)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = json.loads((data_dir / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    held_out = [tokenizer(r["output"])["input_ids"][:64] for r in records[-HELD_OUT:]]
    calibration = [tokenizer(r["instruction"] + "\n" + r["output"])["input_ids"][:128] for r in records[:CALIBRATION]]
    training = [tokenizer(r["output"])["input_ids"][:64] for r in records[CALIBRATION:-HELD_OUT]]
    trained_ppl = _pretrain(model_dir, training)

    def export(name: str, *overrides: str) -> Path:
        out = root / name
        with contextlib.redirect_stdout(io.StringIO()):
            run_export(load_target_config("export", model_dir, [f"export_dir={out}", *overrides]))
        return out

    f16_dir = export("f16", "export_gguf=true", "gguf_outtype=f16", "export_ollama=false")
    files = {"f16": str(f16_dir / "f16-f16.gguf"), "q8_0": str(root / "q8_0.gguf")}
    convert_to_gguf(str(f16_dir), files["q8_0"], "q8_0", family.name)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    matrix = importance_matrix(reference, calibration, tensor_names(str(f16_dir)))
    for name in GGUF_FORMATS[2:]:
        outtype, guided = name.split("+")[0], name.endswith("+imatrix")
        files[name] = str(root / f"{name}.gguf")
        quantize_gguf(files["f16"], files[name], outtype, imatrix=matrix if guided else None)

    f16_logits = _llama_logits(files["f16"], held_out)
    cells = {"greedy": _greedy_agreement(files["f16"], reference, tokenizer)}
    for name, path in files.items():
        logits = f16_logits if name == "f16" else _llama_logits(path, held_out)
        cells[name] = {"bytes": os.path.getsize(path), **_compare(logits, f16_logits, held_out)}
    reference_logits = _torch_logits(reference, held_out)
    cells["safetensors"] = {"bytes": _size(model_dir), **_compare(reference_logits, reference_logits, held_out)}
    calibrated = ["dataset=alpaca_en_demo", f"dataset_dir={data_dir}", "cutoff_len=128",
                  f"export_quantization_samples={CALIBRATION}"]  # gptq: its first records, as the imatrix
    for scheme in SERVING_FORMATS:
        try:
            out = export(scheme, f"export_quantization={scheme}", *calibrated)
        except ConfigError as err:  # e.g. a mixture of experts
            cells[scheme] = {"n/a": str(err).split(": ", 1)[-1].split(". ")[0]}
            continue
        quantized = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()  # run compressed
        cells[scheme] = {"bytes": _size(str(out)), **_compare(_torch_logits(quantized, held_out),
                                                                 reference_logits, held_out)}
    cells["trained"] = trained_ppl
    return cells


def _pretrain(model_dir: str, texts: list[list[int]]) -> tuple[float, float]:
    """A few hundred steps of next-token training on the texts (random weights predict nothing, so every format
    would look alike): the weights are saved back; returns the training loss's perplexity before and after."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(TRAIN_STEPS):
        batch = [texts[(step * 8 + i) % len(texts)] for i in range(8)]
        width = max(map(len, batch))
        ids = torch.tensor([b + [0] * (width - len(b)) for b in batch])
        labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.save_pretrained(model_dir)
    return float(np.exp(np.mean(losses[:5]))), float(np.exp(np.mean(losses[-20:])))


def _size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def _llama_logits(path: str, texts: list[list[int]]) -> list[np.ndarray]:
    from llama_cpp import Llama

    llm = Llama(path, n_ctx=max(map(len, texts)), logits_all=True, verbose=False, seed=0)
    out = []
    for ids in texts:
        llm.reset()
        llm.eval(ids)
        out.append(np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64))
    return out


def _torch_logits(model, texts: list[list[int]]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0, :-1].double().numpy() for ids in texts]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _compare(logits: list[np.ndarray], reference: list[np.ndarray], texts: list[list[int]]) -> dict:
    """Perplexity of `logits` on the texts, and against `reference`: mean KL(reference || logits) per token and the
    share of tokens whose top choice is the same (llama-perplexity --kl-divergence's measures)."""
    nll, kl, same, count = 0.0, 0.0, 0, 0
    for got, want, ids in zip(logits, reference, texts, strict=True):
        p, q = _log_softmax(want), _log_softmax(got)
        nll -= q[np.arange(len(ids) - 1), ids[1:]].sum()
        kl += (np.exp(p) * (p - q)).sum()
        same += int((got.argmax(-1) == want.argmax(-1)).sum())
        count += len(ids) - 1
    return {"ppl": float(np.exp(nll / count)), "kl": float(kl / count), "same_top": same / count}


def _greedy_agreement(path: str, reference, tokenizer) -> str:
    """How many of PROMPTS llama.cpp continues with transformers' 8 greedy tokens."""
    import torch
    from llama_cpp import Llama

    llm = Llama(path, n_ctx=32, verbose=False, seed=0)
    agree = 0
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        expected = reference.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
        stream = llm.generate(ids, temp=0.0, top_k=1, reset=True)
        agree += [next(stream) for _ in expected] == expected
    return f"{agree}/{len(PROMPTS)}"


def table(matrix: dict) -> str:
    lines = ["# Export formats by family", "",
             "Written by `lmforge bench --suite export` (see `lmforge/bench/export_matrix.py`) in "
             f"{matrix['seconds']} s. Each family: a tiny model of its real config and tokenizer, 2 layers, 256 wide, "
             f"trained from random weights for {TRAIN_STEPS} steps (8 answers of alpaca_en_demo a step). GGUF files "
             "are measured in llama.cpp against the f16 file; the compressed-tensors "
             "checkpoints (`export_quantization`) in transformers against the unquantized model. Held-out text: the "
             f"last {HELD_OUT} answers of alpaca_en_demo (up to 64 tokens each); the importance matrix "
             f"(`+imatrix`) and GPTQ's calibration come from its first {CALIBRATION} records. Size is against the "
             "f16 GGUF (the "
             "safetensors rows: against the float32 checkpoint). KL: the mean KL divergence of each next-token "
             "distribution from the reference's; same top: the share of tokens where both pick the same next token.",
             "", "`greedy` says for how many of 3 prompts (English, "
             "code, Chinese) llama.cpp's f16 file continues with transformers' 8 greedy tokens.", ""]
    for family, cells in matrix["results"].items():
        lines.append(f"## {family}")
        lines.append("")
        if "skipped" in cells:
            lines += [f"Skipped: {cells['skipped']}", ""]
            continue
        before, after = cells["trained"]
        lines.append(f"Training perplexity {before:,.0f} -> {after:,.1f}; greedy tokens, llama.cpp f16 vs "
                     f"transformers: {cells['greedy']}")
        lines.append("")
        lines += ["| format | size | perplexity | ratio | KL | same top |", "|---|---|---|---|---|---|"]
        for base, names in (("f16", GGUF_FORMATS), ("safetensors", ("safetensors", *SERVING_FORMATS))):
            for name in names:
                c, ref = cells[name], cells[base]
                if "n/a" in c:
                    lines.append(f"| compressed-tensors {name} | n/a: {c['n/a']} | | | | |")
                    continue
                label = f"GGUF {name}" if base == "f16" else name if name == "safetensors" else \
                    f"compressed-tensors {name}"
                lines.append(f"| {label} | {c['bytes'] / ref['bytes']:.3f} ({c['bytes'] / 2**20:.1f} MiB) | "
                             f"{c['ppl']:,.1f} | {c['ppl'] / ref['ppl']:.4f} | {c['kl']:.5f} | "
                             f"{100 * c['same_top']:.1f} % |")
        lines.append("")
    return "\n".join(lines)
