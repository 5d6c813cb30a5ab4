"""Model parallelism: tensor parallel (alone and with FSDP2 sharding) and expert parallel over gloo on CPUs train
like one process, checkpoints resume exactly and the saved model is plain; sizes and engines that cannot work are
config errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.config.parallelism import ParallelismArguments, parallel_layout
from lmforge.errors import ConfigError
from tests.train.test_distributed import run_lmforge_train
from tests.train.test_resume import losses, sft_args


def test_layout_gives_the_replicas_what_the_sizes_leave():
    layout = parallel_layout(ParallelismArguments(tensor_parallel_size=2, data_shard_size=2), 8)
    assert (layout.tensor, layout.shard, layout.replicate, layout.data_parallel) == (2, 2, 2, 4)
    assert layout.describe() == "tensor 2 x FSDP2 shard 2 x data replicas 2"
    with pytest.raises(ValueError, match="tensor_parallel_size 2 x context_parallel_size 3 = 6 processes per model "
                                         "copy, which does not divide the 8 processes"):
        parallel_layout(ParallelismArguments(tensor_parallel_size=2, context_parallel_size=3), 8)


@pytest.mark.parametrize("extra, message", [
    ({"nproc_per_node": 3, "tensor_parallel_size": 2}, "tensor_parallel_size 2 = 2 processes per model copy, which "
     "does not divide the 3 processes"),
    ({"nproc_per_node": 4, "tensor_parallel_size": 2}, "leaves 2 model copies, which must shard with FSDP2 (plain "
     "data parallelism does not compose with tensor parallelism): set 'data_shard_size: 2'"),
    ({"nproc_per_node": 2, "tensor_parallel_size": 2, "finetuning_type": "lora"}, "'tensor_parallel_size' trains "
     "with 'finetuning_type: full'"),
    ({"nproc_per_node": 4, "tensor_parallel_size": 4}, "'tensor_parallel_size' (4) must divide the model's "
     "num_key_value_heads (2)"),
    ({"nproc_per_node": 2, "context_parallel_size": 2}, "'context_parallel_size: 2' runs torch's context "
     "parallelism, which needs CUDA GPUs"),
    ({"nproc_per_node": 2, "sequence_parallel_size": 2}, "'sequence_parallel_size: 2' runs DeepSpeed Ulysses, which "
     "needs CUDA GPUs"),
    ({"nproc_per_node": 4, "tensor_parallel_size": 2, "context_parallel_size": 2}, "with context or sequence "
     "parallelism it is not supported yet"),
    ({"nproc_per_node": 4, "sequence_parallel_size": 2, "context_parallel_size": 2}, "both split the sequence: "
     "choose one"),
    ({"nproc_per_node": 2, "tensor_parallel_size": 2, "fsdp": "full_shard"}, "'fsdp' and 'data_shard_size' both ask "
     "for FSDP"),
    ({"nproc_per_node": 2, "tensor_parallel_size": 2, "stage": "dpo", "dataset": "dpo_en_demo"},
     "'tensor_parallel_size' does not apply to 'stage: dpo' (it applies to pt, sft)"),
])
def test_parallel_sizes_that_cannot_work_are_clear_errors(tiny_model_dir, tmp_path, capsys, extra, message):
    assert main(["train", *sft_args(tiny_model_dir, tmp_path / "x", **extra)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_expert_parallel_splits_the_ranks_that_split_the_dense_layers():
    layout = parallel_layout(ParallelismArguments(data_shard_size=4, expert_parallel_size=4), 8)
    assert (layout.shard, layout.replicate, layout.expert, layout.data_parallel) == (4, 2, 4, 8)
    assert layout.describe() == "FSDP2 shard 4 x data replicas 2; experts split over 4"
    # 2 tensor x 2 shard ranks: the experts may go over the 4 of them
    assert parallel_layout(ParallelismArguments(tensor_parallel_size=2, data_shard_size=2,
                                                expert_parallel_size=4), 4).expert == 4
    with pytest.raises(ValueError, match=r"'expert_parallel_size: 2' splits the experts over the ranks that split the "
                                         r"dense layers \(tensor_parallel_size 1 x data_shard_size 1 = 1\): it must be "
                                         r"a multiple of 'tensor_parallel_size' and divide that product \(e.g. "
                                         r"'data_shard_size: 2'\)"):
        parallel_layout(ParallelismArguments(expert_parallel_size=2), 2)
    with pytest.raises(ValueError, match="must be a multiple of 'tensor_parallel_size'"):
        parallel_layout(ParallelismArguments(tensor_parallel_size=2, data_shard_size=3, expert_parallel_size=3), 6)


@pytest.mark.parametrize("model, extra, message", [
    ("dense", {}, "'expert_parallel_size': the 'qwen2' model has no experts (not a mixture of experts)"),
    ("moe", {"finetuning_type": "lora"}, "'expert_parallel_size' trains with 'finetuning_type: full'"),
    ("moe", {"nproc_per_node": 8, "data_shard_size": 8, "expert_parallel_size": 8},
     "'expert_parallel_size' (8) must divide the model's 4 experts per layer"),
    ("moe", {"stage": "dpo", "dataset": "dpo_en_demo", "data_shard_size": None},
     "'expert_parallel_size' does not apply to 'stage: dpo'"),
])
def test_expert_parallel_settings_that_cannot_work_are_clear_errors(model, extra, message, tiny_model_dir,
                                                                    real_model, tmp_path, capsys):
    model_dir = tiny_model_dir if model == "dense" else real_model("qwen3-moe")
    values = {"nproc_per_node": 2, "data_shard_size": 2, "expert_parallel_size": 2, **extra}
    values = {key: value for key, value in values.items() if value is not None}
    assert main(["train", *sft_args(model_dir, tmp_path / "x", **values)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    ({"fsdp": True}, "'fsdp' has no effect in 'stage: grpo' (its own loop does not use it): shard the policy with "
     "'data_shard_size: N' (FSDP2) instead"),
    ({"nproc_per_node": 2, "data_shard_size": 2, "rollout_batch_size": 6, "num_generations": 3,
      "per_device_train_batch_size": 4},
     "the 18 completions of a step must be a multiple of 'per_device_train_batch_size' x processes (8)"),
    ({"nproc_per_node": 2, "tensor_parallel_size": 2}, "'tensor_parallel_size' does not apply to 'stage: grpo'"),
])
def test_rl_sharding_settings_that_cannot_work_are_clear_errors(tiny_model_dir, tmp_path, capsys, extra, message):
    from tests.train.test_rl import rl_args

    args = rl_args("grpo", tiny_model_dir, tmp_path / "x", reward_funcs="lmforge.rewards:exact_match", **extra)
    assert main(["train", *args]) == 2
    assert message in capsys.readouterr().err


def test_processes_are_counted_as_the_launcher_will_start_them(tiny_model_dir, tmp_path, monkeypatch):
    """`nproc_per_node: auto` (one per GPU) and $NPROC_PER_NODE/$NNODES count before the launch as they do at it."""
    from lmforge.config import load_config
    from lmforge.config.launch import process_count

    for name in ("WORLD_SIZE", "NPROC_PER_NODE", "NNODES", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("lmforge.device.gpu_count", lambda: 2)
    cfg = load_config(None, sft_args(tiny_model_dir, tmp_path / "x", nproc_per_node="auto", tensor_parallel_size=2))
    assert process_count(cfg.launch) == 2
    monkeypatch.setenv("NPROC_PER_NODE", "4")
    monkeypatch.setenv("NNODES", "2")
    cfg = load_config(None, sft_args(tiny_model_dir, tmp_path / "x", tensor_parallel_size=2, data_shard_size=4))
    assert process_count(cfg.launch) == 8


def test_tensor_parallel_needs_a_model_with_a_plan(tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_head=2, n_embd=16).save_pretrained(tmp_path / "gpt2")
    assert main(["train", *sft_args(str(tmp_path / "gpt2"), tmp_path / "x", nproc_per_node=2,
                                    tensor_parallel_size=2)]) == 2
    assert "the 'gpt2' architecture ships no tensor-parallel plan" in capsys.readouterr().err


def test_context_parallel_rows_must_split_evenly(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lmforge.device.cuda_available", lambda: True)  # as on a GPU machine
    assert main(["train", *sft_args(tiny_model_dir, tmp_path / "x", nproc_per_node=2, context_parallel_size=2,
                                    cutoff_len=90)]) == 2
    assert "'cutoff_len' (90) must be a multiple of 4 with 'context_parallel_size: 2'" in capsys.readouterr().err


@pytest.mark.parametrize("name, layout", [
    ("sft_tp.yaml", "tensor 4"),
    ("sft_tp_fsdp2.yaml", "tensor 2 x FSDP2 shard 4"),
    ("sft_sp_32k.yaml", "sequence 4 x data replicas 2"),
    ("pt_cp_32k.yaml", "context 8"),
])
def test_shipped_parallel_examples_validate(name, layout, tmp_path, monkeypatch):
    """On a GPU machine with DeepSpeed (patched in: neither is here), with a local config of the example's model
    shape (no network)."""
    import importlib.util

    from transformers import Qwen2Config

    from lmforge.config import load_config
    from lmforge.model.parallel import describe, run_layout
    from tests.conftest import REPO

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "deepspeed"
                        else real_find_spec(n, *a))
    monkeypatch.setattr("lmforge.device.cuda_available", lambda: True)
    monkeypatch.setattr("lmforge.config.parse.accelerator_available", lambda: True)
    heads = (40, 8) if "fsdp2" in name else (28, 4)
    Qwen2Config(num_attention_heads=heads[0], num_key_value_heads=heads[1], hidden_size=heads[0] * 8,
                num_hidden_layers=1).save_pretrained(tmp_path / "model")
    monkeypatch.chdir(REPO)
    path, overrides = str(REPO / "examples" / "distributed" / name), [f"model_name_or_path={tmp_path / 'model'}"]
    if name == "sft_sp_32k.yaml" and real_find_spec("deepspeed") is None:
        # transformers reads a DeepSpeed config only with DeepSpeed installed: here the example says what it needs
        monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
        with pytest.raises(ConfigError, match="'deepspeed' needs the DeepSpeed package"):
            load_config(path, overrides)
        overrides.append("deepspeed=null")
        cfg = load_config(path, [*overrides, "sequence_parallel_size=1"])  # the rest of the example holds
        assert describe(cfg, parallel_layout(ParallelismArguments(sequence_parallel_size=4), 8)).startswith(
            f"Parallelism: {layout};")
        return
    cfg = load_config(path, overrides)
    assert describe(cfg, run_layout(cfg)).startswith(f"Parallelism: {layout};")
    if name == "pt_cp_32k.yaml":  # accelerate's torch context parallelism runs inside FSDP2
        assert cfg.training.fsdp and cfg.training.fsdp_config["version"] == 2


def test_context_parallel_shards_through_accelerate_not_as_the_model_loads(tiny_model_dir, tmp_path, monkeypatch,
                                                                           capsys):
    """With context parallelism the FSDP2 shards are accelerate's (its mesh joins shard and context), so the model
    loads whole and the Trainer gets the sizes; Ulysses shards with ZeRO, so `data_shard_size` is refused there."""
    from lmforge.config import load_config
    from lmforge.model.parallel import load_kwargs, run_layout, trainer_parallelism

    monkeypatch.setattr("lmforge.device.cuda_available", lambda: True)
    monkeypatch.setattr("lmforge.config.parse.accelerator_available", lambda: True)
    cfg = load_config(None, sft_args(tiny_model_dir, tmp_path / "x", nproc_per_node=4, context_parallel_size=2,
                                     data_shard_size=2))
    layout = run_layout(cfg)
    assert not layout.splits_at_load and load_kwargs(layout) == {} and cfg.training.fsdp
    mesh = trainer_parallelism(cfg, layout)
    assert (mesh.cp_size, mesh.dp_shard_size, mesh.dp_replicate_size) == (2, 2, 1)
    assert main(["train", *sft_args(tiny_model_dir, tmp_path / "x", nproc_per_node=4, sequence_parallel_size=2,
                                    data_shard_size=2)]) == 2
    assert "'data_shard_size' with 'sequence_parallel_size'" in capsys.readouterr().err


def _weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _assert_resumes_exactly(run, resumed, step: int, args: list[str]) -> None:
    """checkpoint-`step` of `run`, copied into the fresh directory `resumed` and trained on with `args` (the same
    run's, writing there), continues the same run exactly: the later steps' losses and the saved model."""
    resumed.mkdir()
    shutil.copytree(run / f"checkpoint-{step}", resumed / f"checkpoint-{step}")
    proc = run_lmforge_train([*args, "resume_from_checkpoint=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = losses(run), losses(resumed)
    assert sorted(after) == [s for s in sorted(before) if s > step] and all(after[s] == before[s] for s in after)
    assert all(torch.equal(_weights(resumed)[k], v) for k, v in _weights(run).items())


@pytest.mark.slow
def test_two_process_tensor_parallel_trains_resumes_and_saves_like_one_process(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    run = {"max_steps": 10, "save_steps": 5, "chunked_loss": True, "sample_prompts": ["Hi"]}
    single, tp, resumed = tmp_path / "single", tmp_path / "tp", tmp_path / "resumed"
    assert main(["train", *sft_args(tiny_model_dir, single, **run)]) == 0
    proc = run_lmforge_train([*sft_args(tiny_model_dir, tp, **run), "nproc_per_node=2", "tensor_parallel_size=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Parallelism: tensor 2; global batch 4 sequences of up to 96 tokens = 384 tokens per step" in proc.stderr
    one, two = losses(single), losses(tp)
    assert sorted(two) == list(range(1, 11))
    for step in range(1, 11):
        assert two[step] == pytest.approx(one[step], abs=1e-4), step
    # the saved model is the single-process one, as plain full tensors
    reference, saved = _weights(single), _weights(tp)
    assert set(saved) == set(reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-4, msg=name)
    AutoModelForCausalLM.from_pretrained(tp)  # loads with plain transformers
    # a checkpoint resumed in a fresh directory continues the same run exactly
    assert {"optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"} <= {
        p.name for p in (tp / "checkpoint-5").iterdir()}
    _assert_resumes_exactly(tp, resumed, 5, [*sft_args(tiny_model_dir, resumed, **run), "nproc_per_node=2",
                                             "tensor_parallel_size=2"])


@pytest.mark.slow
def test_tensor_parallel_with_fsdp2_shards_trains_and_resumes_like_one_process(tiny_model_dir, tmp_path):
    """2D: 4 processes, tensor 2 x FSDP2 shard 2 (per-device batch 2: the same global batch of 4)."""
    single, two_d, resumed = tmp_path / "single", tmp_path / "2d", tmp_path / "resumed"
    assert main(["train", *sft_args(tiny_model_dir, single, max_steps=6, save_strategy="no")]) == 0
    run = [*sft_args(tiny_model_dir, two_d, max_steps=6, save_steps=3, per_device_train_batch_size=2),
           "nproc_per_node=4", "tensor_parallel_size=2", "data_shard_size=2"]
    proc = run_lmforge_train(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Parallelism: tensor 2 x FSDP2 shard 2; global batch 4 sequences" in proc.stderr
    one, four = losses(single), losses(two_d)
    for step in range(1, 7):
        assert four[step] == pytest.approx(one[step], abs=1e-4), step
    reference, saved = _weights(single), _weights(two_d)
    for name, tensor in reference.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-4, msg=name)
    _assert_resumes_exactly(two_d, resumed, 3, [a.replace(str(two_d), str(resumed)) for a in run])


@pytest.mark.slow
def test_tensor_parallel_bf16_checkpoint_trains_float32_masters_like_one_process(tiny_model_dir, tmp_path):
    """A bf16 checkpoint under bf16 autocast: the split weights become float32 masters (DTensors change dtype only
    through the module conversion) and are saved back in bf16, as on one process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    run = {"max_steps": 4, "save_strategy": "no", "bf16": True}
    single, tp = tmp_path / "single", tmp_path / "tp"
    assert main(["train", *sft_args(str(model_dir), single, **run)]) == 0
    proc = run_lmforge_train([*sft_args(str(model_dir), tp, **run), "nproc_per_node=2", "tensor_parallel_size=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = losses(single), losses(tp)
    for step in range(1, 5):
        assert two[step] == pytest.approx(one[step], rel=1e-3), step
    assert {t.dtype for t in _weights(tp).values()} == {torch.bfloat16}


@pytest.mark.slow
def test_two_process_expert_parallel_trains_resumes_and_saves_like_one_process(real_model, tmp_path):
    """Qwen3-MoE (4 experts, top-2) with its router loss on: 2 processes, dense layers FSDP2-sharded and experts
    split 2 of 4 on each (tokens reach them by all-to-all), against one process with the same micro-batches (the
    router loss balances each micro-batch, as each process computes it: 2 accumulated micro-batches of 2)."""
    model_dir = real_model("qwen3-moe")
    run = {"max_steps": 6, "save_steps": 3, "router_aux_loss_coef": 0.01, "per_device_train_batch_size": 2}
    split = ["nproc_per_node=2", "data_shard_size=2", "expert_parallel_size=2"]
    single, ep, resumed = tmp_path / "single", tmp_path / "ep", tmp_path / "resumed"
    assert main(["train", *sft_args(model_dir, single, **run, gradient_accumulation_steps=2)]) == 0
    proc = run_lmforge_train([*sft_args(model_dir, ep, **run), *split])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Parallelism: FSDP2 shard 2; experts split over 2; global batch 4 sequences" in proc.stderr
    assert "Experts: 2 of 4 per layer on each process (expert parallel)" in proc.stderr
    one, two = losses(single), losses(ep)
    assert sorted(two) == list(range(1, 7))
    for step in range(1, 7):
        assert two[step] == pytest.approx(one[step], abs=1e-4), step
    # the saved model is the single-process one: the same names (per-expert, as published) and dtype (bf16)
    reference, saved = _weights(single), _weights(ep)
    assert set(saved) == set(reference) and "model.layers.0.mlp.experts.3.down_proj.weight" in saved
    for name, tensor in reference.items():
        assert saved[name].dtype == tensor.dtype == torch.bfloat16, name
        torch.testing.assert_close(saved[name].float(), tensor.float(), rtol=2 ** -7, atol=1e-5, msg=name)
    _assert_resumes_exactly(ep, resumed, 3, [*sft_args(model_dir, resumed, **run), *split])
