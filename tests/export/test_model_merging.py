"""`lmforge merge` on fine-tunes of the tiny real Qwen3: merging a model with itself returns it, linear 0.5/0.5 is
the element-wise mean, TIES equals the published algorithm (trim to the largest `density`, elect a sign per weight
by the summed differences, average the agreeing ones) computed here, DARE keeps about `density` of each difference
and rescales it to the whole difference's L1 norm, a LoRA adapter is a member as its merged model is, and the
merged model loads and generates. The fine-tunes are the base with seeded changes to every weight (their content
does not matter to a merge)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main

pytest.importorskip("mergekit")


def _weights(path) -> dict[str, torch.Tensor]:
    weights = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors") and not name.startswith("adapter"):
            weights.update({k: v.float() for k, v in load_file(os.path.join(path, name)).items()})
    return weights


@pytest.fixture(scope="module")
def family(real_model, tmp_path_factory):
    """The tiny Qwen3 base (float32) and two fine-tunes of it: every weight moved by seeded noise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("merge-family")
    tokenizer = AutoTokenizer.from_pretrained(real_model("qwen3"))
    paths = {}
    for name, seed in (("base", None), ("a", 1), ("b", 2)):
        model = AutoModelForCausalLM.from_pretrained(real_model("qwen3"), dtype=torch.float32)
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * 0.02)
        paths[name] = str(root / name)
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def _merge(tmp_path, **values) -> dict[str, torch.Tensor]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "merged"
    config = tmp_path / "merge.yaml"
    config.write_text(json.dumps({"output_dir": str(out), "merge_dtype": "float32", **values}))
    assert main(["merge", str(config)]) == 0
    return _weights(out)


@pytest.mark.slow
def test_a_model_merged_with_itself_is_itself_and_linear_halves_are_the_mean(family, tmp_path):
    import shutil

    a, b = _weights(family["a"]), _weights(family["b"])
    copy = shutil.copytree(family["a"], tmp_path / "a-again")  # mergekit refuses one path listed twice
    same = _merge(tmp_path / "same", models=[{"model": family["a"], "weight": 0.5},
                                             {"model": str(copy), "weight": 0.5}])
    assert same.keys() == a.keys()
    for name in a:
        torch.testing.assert_close(same[name], a[name], rtol=0, atol=1e-7)
    mean = _merge(tmp_path / "mean", models=[{"model": family["a"], "weight": 0.5},
                                             {"model": family["b"], "weight": 0.5}])
    for name in a:
        torch.testing.assert_close(mean[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-7)


def _ties(base: torch.Tensor, tuned: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES-merging (Yadav et al., 2023) as published: each difference trimmed to its `density` largest
    magnitudes, weighted; the sign of each weight elected by the sum; the agreeing differences summed and divided
    by the weights that agree."""
    deltas = []
    for t, w in zip(tuned, weights, strict=True):
        delta = (t - base).reshape(-1)
        keep = torch.zeros_like(delta)
        keep[delta.abs().argsort(descending=True)[:max(1, int(density * delta.numel()))]] = 1
        deltas.append(delta * keep * w)
    stacked = torch.stack(deltas)
    elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = stacked.sign() == elected
    divisor = (torch.tensor(weights)[:, None] * agree).sum(0)
    divisor[divisor == 0] = 1
    return base + ((stacked * agree).sum(0) / divisor).reshape(base.shape)


@pytest.mark.slow
def test_ties_is_the_published_algorithm_and_dare_keeps_its_density(family, tmp_path):
    base, a, b = (_weights(family[k]) for k in ("base", "a", "b"))
    ties = _merge(tmp_path / "ties", merge_method="ties", base_model=family["base"],
                  models=[{"model": family["a"], "weight": 0.7, "density": 0.4},
                          {"model": family["b"], "weight": 0.3, "density": 0.4}])
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight",
                 "model.norm.weight", "lm_head.weight"):
        expected = _ties(base[name], [a[name], b[name]], [0.7, 0.3], 0.4)
        torch.testing.assert_close(ties[name], expected, rtol=1e-5, atol=1e-6)

    dare = _merge(tmp_path / "dare", merge_method="dare_linear", base_model=family["base"],
                  models=[{"model": family["a"], "weight": 1.0, "density": 0.25}])
    name = "model.layers.0.mlp.up_proj.weight"
    moved = dare[name] - base[name]
    kept = moved != 0
    assert 0.2 < kept.float().mean().item() < 0.3  # a random quarter of the difference kept...
    delta = a[name] - base[name]
    scale = delta.abs().sum() / delta[kept].abs().sum()  # ...and rescaled to the whole difference's L1 norm
    torch.testing.assert_close(moved[kept], delta[kept] * scale, rtol=1e-4, atol=1e-6)
    again = _merge(tmp_path / "dare-again", merge_method="dare_linear", base_model=family["base"],
                   models=[{"model": family["a"], "weight": 1.0, "density": 0.25}])
    assert torch.equal(again[name], dare[name])  # `merge_seed`: the same drop


@pytest.mark.slow
def test_an_adapter_is_a_member_as_its_merged_model_and_the_merge_generates(family, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(family["base"], dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"],
                                                  init_lora_weights=False))
    adapter = str(tmp_path / "adapter")
    peft_model.save_pretrained(adapter)
    merged_by_peft = {k: v.float() for k, v in peft_model.merge_and_unload().state_dict().items()}

    merged = _merge(tmp_path / "with-adapter", merge_method="task_arithmetic", base_model=family["base"],
                    models=[{"model": adapter, "weight": 1.0}])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        torch.testing.assert_close(merged[name], merged_by_peft[name], rtol=1e-5, atol=1e-6)

    out = tmp_path / "with-adapter" / "merged"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # the base's template travels with the merge
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer("Hello", return_tensors="pt")["input_ids"]
    generated = loaded.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4


@pytest.mark.parametrize("values, message", [
    ({"merge_method": "ties", "models": [{"model": "A"}, {"model": "B"}]},
     "'merge_method: ties' adds the models' differences from the model they were fine-tuned from: set 'base_model'"),
    ({"merge_method": "slerp", "base_model": "A", "models": [{"model": "B"}, {"model": "C"}]},
     "'merge_method: slerp' interpolates between two models ('base_model' and one other); got 3"),
    ({"models": [{"model": "A", "density": 0.5}, {"model": "B"}]},
     "'models' entry 1 (A): 'density' applies to ties, dare_ties, dare_linear, not 'merge_method: linear'"),
    ({"merge_method": "ties", "base_model": "A", "models": [{"model": "B", "density": 1.5}]},
     "'models' entry 1 (B): 'density' is the share of its difference kept, in (0, 1]; got 1.5"),
    ({"models": [{"model": "A", "wieght": 0.5}, {"model": "B"}]}, "'models' entry 1 (A): unknown key(s) wieght"),
    ({"models": [{"model": "/no/such/model"}, {"model": "B"}]},
     "'models' entry 1: the directory '/no/such/model' does not exist"),
    ({"models": [{"model": "A"}]}, "a merge needs at least two models"),
])
def test_a_merge_that_cannot_run_is_a_config_error(values, message, tmp_path, capsys):
    config = tmp_path / "merge.yaml"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "out"), **values}))
    assert main(["merge", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
