"""`lmforge plan`: the step traced over fake tensors against the same step measured (`memory_report`, torch's
MemTracker over the real tensors of the run's first two steps) on a tiny model of the real Qwen3 family (its
151,936-token vocabulary), for the recipes the planner covers; a plan that does not fit a stated limit does not fit
it when run, and the change it suggests does; the figures for sharded GPU runs follow the ZeRO arithmetic."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.train.plan.devices import GIB, Devices, parse_devices, parse_memory
from lmforge.train.plan.rl_trace import trace_online_rl
from lmforge.train.plan.trace import trace_step
from tests.conftest import LF_DEMO, REPO, write_jsonl

COMMON = {"dataset_dir": str(LF_DEMO), "max_samples": 64, "cutoff_len": 128, "per_device_train_batch_size": 2,
          "max_steps": 2, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "learning_rate": 1e-4}
SFT = {"stage": "sft", "template": "chatml", "dataset": "alpaca_en_demo", "packing": True, "train_on_prompt": True}
# rows the data fills to `cutoff_len` with every token trained: the planner's worst case is the run's own batch
RECIPES = {
    "pt": {"stage": "pt", "dataset": "c4_demo"},
    "sft packed, chunked loss": SFT,
    "sft standard loss": {**SFT, "chunked_loss": False},
    "sft gradient checkpointing": {**SFT, "gradient_checkpointing": True},
    "sft 2 accumulated micro-batches": {**SFT, "gradient_accumulation_steps": 2},
    "sft lora": {**SFT, "finetuning_type": "lora", "lora_target": "all"},
    "sft freeze": {**SFT, "finetuning_type": "freeze"},
    "dpo, reference copy": {"stage": "dpo", "template": "chatml", "dataset": "dpo_en_demo", "cutoff_len": 48},
    "dpo lora, adapters off": {"stage": "dpo", "template": "chatml", "dataset": "dpo_en_demo", "cutoff_len": 48,
                               "finetuning_type": "lora"},
    "rm": {"stage": "rm", "template": "chatml", "dataset": "dpo_en_demo", "cutoff_len": 48},
}


def _values(model_dir: str, out, recipe: dict) -> list[str]:
    values = {**COMMON, "model_name_or_path": model_dir, "output_dir": str(out), **recipe}
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def _measured(model_dir: str, out, recipe: dict) -> dict[str, int]:
    assert main(["train", *_values(model_dir, out, recipe), "memory_report=true"]) == 0
    return json.loads((out / "memory_report.json").read_text())["peak_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [*RECIPES, "kd, a teacher of the same family"])
def test_the_planned_peak_is_the_measured_peak_of_the_real_step(recipe, real_model, family_run, tmp_path):
    model_dir = real_model("qwen3")
    values = RECIPES.get(recipe) or {**SFT, "stage": "kd", "teacher_model": family_run("qwen3").teacher()}
    measured = _measured(model_dir, tmp_path / "run", values)
    planned = trace_step(load_config(None, _values(model_dir, tmp_path / "plan", values))).memory
    assert planned.total == pytest.approx(measured["total"], rel=0.10), (planned.as_dict(), measured)
    for kind in ("parameters", "optimizer_state"):  # what the recipe trains and keeps, to the byte
        assert getattr(planned, kind) == measured[kind], kind


# ppo/grpo: prompts all of one length (`cutoff_len` is set to it) and a tiny random policy that does not sample a stop
# token in 8 tokens of a 151,936-token vocabulary: the measured step is the longest the planner assumes
RL_RECIPES = {
    "grpo full, reference copy": {"stage": "grpo", "rollout_batch_size": 2, "num_generations": 2},
    "ppo lora, value head, adapters off": {"stage": "ppo", "rollout_batch_size": 2, "finetuning_type": "lora",
                                           "gradient_accumulation_steps": 2, "per_device_train_batch_size": 1},
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RL_RECIPES)
def test_the_planned_peak_of_an_online_rl_step_is_the_measured_one(recipe, real_model, tmp_path):
    model_dir = real_model("qwen3")
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"messages": [{"role": "user", "content": "Name the vowels, one by one."},
                                        {"role": "assistant", "content": "a e i o u"}]}] * 4)
    rewards = tmp_path / "rewards.py"
    rewards.write_text("def length(prompts, completions, **columns):\n    return [len(c) for c in completions]\n")
    recipe = {"template": "chatml", "dataset": str(prompts), "max_new_tokens": 8, "logging_steps": 1,
              "reward_funcs": f"{rewards}:length", **RL_RECIPES[recipe]}
    dump = tmp_path / "prompts.ids.jsonl"
    assert main(["data", "dump", *_values(model_dir, tmp_path / "d", recipe), "--output", str(dump)]) == 0
    recipe["cutoff_len"] = len(json.loads(dump.read_text().splitlines()[0])["input_ids"])
    measured = _measured(model_dir, tmp_path / "run", recipe)
    completions = [json.loads(line)["completion_length_max"] for line in open(tmp_path / "run" / "trainer_log.jsonl")]
    assert completions == [8, 8]  # the longest completions: what the plan assumes
    planned = trace_online_rl(load_config(None, _values(model_dir, tmp_path / "plan", recipe))).memory
    assert planned.total == pytest.approx(measured["total"], rel=0.10), (planned.as_dict(), measured)
    for kind in ("parameters", "optimizer_state"):
        assert getattr(planned, kind) == measured[kind], kind


@pytest.mark.slow
@pytest.mark.parametrize("method, bits, kept", [("torchao", 8, 0.7),
                                                pytest.param("hqq", 4, 0.8, marks=pytest.mark.slow),
                                                pytest.param("hqq", 3, 0.8, marks=pytest.mark.slow)])
def test_a_low_bit_base_is_planned_as_measured(method, bits, kept, tiny_model_dir, tmp_path):
    """QLoRA over torchao's weight-only int8 or HQQ's 4 and 3 bits (they run on the CPU): the plan's base (its linear
    weights packed, with their scales, the rest as loaded) against the real step's; the tiny Qwen2, whose linear
    layers are most of its weights."""
    from lmforge.train.plan.command import make_plan

    if importlib.util.find_spec(method) is None and not os.environ.get("CI"):
        pytest.skip(f"{method} is not installed (the dev extra installs it)")
    recipe = {**SFT, "finetuning_type": "lora", "lora_target": "all", "quantization_bit": bits,
              "quantization_method": method}
    measured = _measured(tiny_model_dir, tmp_path / "run", recipe)
    cfg = load_config(None, _values(tiny_model_dir, tmp_path / "plan", recipe))
    planned = make_plan(cfg, Devices("a large device", 1, 2**40, None, reserved=0)).device.memory
    unquantized = trace_step(cfg)  # float32 weights: int8 keeps a quarter of the linear ones (and a scale per row)
    assert planned.parameters == pytest.approx(measured["parameters"], rel=0.02), (planned, measured)
    assert planned.total == pytest.approx(measured["total"], rel=0.10), (planned, measured)
    assert measured["parameters"] < unquantized.memory.parameters - kept * unquantized.frozen_linear_bytes


@pytest.mark.slow
def test_a_run_planned_not_to_fit_does_not_and_the_suggested_change_does(real_model, tmp_path):
    """A device with 90 % of the measured peak: the plan says no and suggests gradient checkpointing (the cheapest
    change that fits, planned); run both, the original peak exceeds the limit and the suggested run's does not."""
    from lmforge.train.plan.command import cheapest_fit, make_plan

    model_dir = real_model("qwen3")
    recipe = {**SFT, "chunked_loss": False}
    peak = _measured(model_dir, tmp_path / "original", recipe)["total"]
    device = Devices("a 90 % device", 1, int(0.9 * peak), None, reserved=0)
    plan = make_plan(load_config(None, _values(model_dir, tmp_path / "p", recipe)), device)
    assert not plan.fits
    changes, fitted = cheapest_fit(plan)
    assert changes == ["chunked_loss: true"] and fitted.fits
    suggested = _measured(model_dir, tmp_path / "suggested", {**recipe, "chunked_loss": True})["total"]
    assert suggested <= device.usable < peak


def test_gpu_figures_follow_the_zero_arithmetic(tiny_model_dir, tmp_path, capsys):
    """8 x H100 with ZeRO-3 (a config made on a machine without DeepSpeed or a GPU): bf16 weights and gradients
    and the fp32 master + two moments, each an eighth per device, plus the two decoder layers being gathered."""
    zero3 = str(REPO / "examples" / "deepspeed" / "ds_z3_config.json")
    args = _values(tiny_model_dir, tmp_path / "x", {**SFT, "deepspeed": zero3, "bf16": True})
    assert main(["plan", *args, "--gpus", "8xH100-80GB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    params, memory = plan["parameters"], plan["per_device_bytes"]
    assert plan["engine"] == "ZeRO-3 over 8 devices" and plan["fits"]
    assert memory["optimizer_state"] == params * 12 // 8
    assert memory["gradients"] == params * 2 // 8
    layer = (memory["parameters"] - params * 2 // 8) / 2  # what one gathered layer holds, in bf16
    assert 0 < layer < params * 2 / 2
    assert plan["devices"] == {"name": "H100-80GB", "count": 8, "memory_bytes": int(79.2 * GIB), "tflops": 989.0}
    assert plan["speed"]["tokens_per_second"] > 0


def test_context_parallelism_splits_each_row_over_its_devices(tiny_model_dir, tmp_path, capsys):
    """`context_parallel_size: 2` on 2 GPUs (no `nproc_per_node`: a process per GPU is planned): FSDP2 shards the
    weights over both, each holds half of every row's activations, and one batch goes through per step."""
    args = _values(tiny_model_dir, tmp_path / "x", {**SFT, "packing": False, "bf16": True,
                                                    "per_device_train_batch_size": 1})
    plans = {}
    for extra in ([], ["context_parallel_size=2"]):
        assert main(["plan", *args, *extra, "--gpus", "2xH100-80GB", "--json"]) == 0
        plans[bool(extra)] = json.loads(capsys.readouterr().out)
    ddp, split = plans[False], plans[True]
    assert ddp["engine"].startswith("DDP over 2") and split["engine"] == "FSDP over 2 devices"
    for kind in ("activations", "temporaries"):
        assert split["per_device_bytes"][kind] == ddp["per_device_bytes"][kind] // 2
    assert split["per_device_bytes"]["optimizer_state"] == split["parameters"] * 12 // 2  # fp32 master, 2 moments
    assert split["speed"]["tokens_per_step"] == ddp["speed"]["tokens_per_step"] // 2


def test_devices_are_read_as_users_write_them():
    assert parse_devices("8xH100-80GB").count == 8 and parse_devices("8xH100-80GB").tflops == 989.0
    assert parse_devices("2").count == 2 and parse_devices("4090").name == "RTX-4090"
    custom = parse_devices("2", "24GiB", 100.0)
    assert (custom.count, custom.memory, custom.tflops, custom.usable) == (2, 24 * GIB, 100.0, 23 * GIB)
    assert parse_memory("80GB") == parse_memory("80G") == 80 * GIB and parse_memory("512MiB") == 2**29
    with pytest.raises(ValueError, match="unknown GPU 'Z9000': known are"):
        parse_devices("Z9000")


def test_plan_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    args = _values(tiny_model_dir, tmp_path / "x", SFT)
    assert main(["plan", *args, "--gpus", "2xWHATEVER"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'WHATEVER'" in err and "Traceback" not in err
    assert main(["plan", *_values(tiny_model_dir, tmp_path / "y", {"stage": "grpo"}), "--gpus", "1"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_qlora_with_zero3_is_a_config_error_the_planner_does_not_suggest(tiny_model_dir, tmp_path, capsys):
    zero3 = str(REPO / "examples" / "deepspeed" / "ds_z3_config.json")
    args = _values(tiny_model_dir, tmp_path / "x", {**SFT, "finetuning_type": "lora", "quantization_bit": 4,
                                                    "deepspeed": zero3})
    assert main(["plan", *args, "--gpus", "2xA100-80GB"]) == 2
    err = capsys.readouterr().err
    assert "'quantization_bit' with ZeRO-3/FSDP would shard the packed 4/8-bit weights" in err
    assert "Traceback" not in err


# (the optimizer state measured against AdamW's two float32 moments per weight, the fall of the loss in 8 steps):
# Muon keeps one momentum for the layers' matrices; Adam-mini a first moment, and a second per weight only for the
# embeddings and output layer (half this tiny model's weights: a 384-token vocabulary at width 32); BAdam both
# moments for one layer of two; GaLore and APOLLO Adam's moments in a rank-8 projection of the layers' matrices (and
# the projection). BAdam leaves the embeddings and the random output layer frozen, so on this tiny model its loss
# falls far less than the others' (measured 0.09; GaLore 0.22, APOLLO 0.28, the others 0.65 and more).
LOW_RANK = "rank=8,update_proj_gap=4,scale=1"
OPTIMIZERS = {"muon": ({"optimizer": "muon"}, 0.8, 0.5), "adam_mini": ({"optimizer": "adam_mini"}, 0.8, 0.5),
              "badam": ({"optimizer": "badam", "badam_switch_interval": 2}, 0.3, 0.05),
              "galore_adamw": ({"optim": "galore_adamw", "optim_args": LOW_RANK}, 0.8, 0.15),
              "apollo_adamw": ({"optim": "apollo_adamw", "optim_args": LOW_RANK}, 0.8, 0.15),
              "paged_adamw_8bit": ({"optim": "paged_adamw_8bit"}, 0.8, 0.5),
              "adamw_torch_8bit": ({"optim": "adamw_torch_8bit"}, 0.6, 0.5),
              "adamw_torch_4bit": ({"optim": "adamw_torch_4bit"}, 0.6, 0.5)}
# torchao's low-bit AdamW compiles its step, which torch's tensor tracker (`memory_report`) does not let run: its
# state is measured as the bytes of the tensors the run's optimizer holds, from its checkpoint
COMPILED_STEP = ("adamw_torch_8bit", "adamw_torch_4bit")


def _optimizer_state_bytes(checkpoint) -> int:
    """The bytes of the tensors in a checkpoint's optimizer state (a quantized state's inner tensors counted)."""
    def size(value) -> int:
        if type(value) is torch.Tensor:
            return value.numel() * value.element_size()
        if isinstance(value, torch.Tensor):  # a tensor subclass (torchao's OptimState8bit): its inner tensors
            return sum(size(getattr(value, name)) for name in value.__tensor_flatten__()[0])
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        return 0
    state = torch.load(checkpoint / "optimizer.pt", weights_only=False)["state"]
    return sum(size(v) for v in state.values())


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_memory_light_optimizers_train_and_hold_the_planned_state(optimizer, tiny_model_dir, tmp_path):
    """The loss falls; the optimizer state measured on the real step is the planned one, and well under AdamW's two
    float32 moments per weight; a checkpoint resumes the same run. (The tiny Qwen2: a small vocabulary, so the
    decoder layers' matrices, where these optimizers save, are most of the weights; the 8/4-bit ones quantize only
    its two 384 x 32 embedding and output matrices, tensors under 4,096 weights keeping float32 states.)"""
    from lmforge.runlog import read_log

    extra, share, fall = OPTIMIZERS[optimizer]
    package = {"galore_adamw": "galore_torch", "apollo_adamw": "apollo_torch",
               "paged_adamw_8bit": "bitsandbytes"}.get(optimizer)
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (the config error is tested below)")
    model_dir = tiny_model_dir
    recipe = {**SFT, **extra, "max_steps": 8, "learning_rate": 5e-3, "save_strategy": "steps", "save_steps": 4,
              "logging_steps": 1}
    if optimizer in COMPILED_STEP:
        assert main(["train", *_values(model_dir, tmp_path / "run", recipe)]) == 0
        measured = {"optimizer_state": _optimizer_state_bytes(tmp_path / "run" / "checkpoint-4")}
    else:
        measured = _measured(model_dir, tmp_path / "run", recipe)
    losses = {r["step"]: r["loss"] for r in read_log(str(tmp_path / "run")) if "loss" in r}
    assert losses[8] < losses[1] - fall, losses
    step = trace_step(load_config(None, _values(model_dir, tmp_path / "plan", recipe)))
    assert step.memory.optimizer_state == measured["optimizer_state"]
    assert measured["optimizer_state"] < share * 2 * 4 * step.parameters
    if optimizer == "badam":  # every layer trained in turn (switching every 2 steps); embeddings and output frozen
        before, after = (load_file(os.path.join(d, "model.safetensors")) for d in (model_dir, tmp_path / "run"))
        changed = {name.split(".layers.")[-1].split(".")[0] if ".layers." in name else name
                   for name in before if not torch.equal(before[name].float(), after[name].float())}
        assert changed == {"0", "1"}, changed
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(tmp_path / "run" / "checkpoint-4", resumed / "checkpoint-4")
    assert main(["train", *_values(model_dir, resumed, recipe), "resume_from_checkpoint=true"]) == 0
    after = {r["step"]: r["loss"] for r in read_log(str(resumed)) if "loss" in r}
    assert all(after[s] == pytest.approx(losses[s], abs=1e-5) for s in (5, 6, 7, 8)), (after, losses)


@pytest.mark.parametrize("extra, message", [
    ({"optim": "galore_adamw"}, "'optim: galore_adamw' needs the galore-torch package: `pip install galore-torch`"),
    ({"optim": "adamw_torch_8bit"}, "'optim: adamw_torch_8bit' needs the torchao package"),
    ({"optim": "paged_adamw_8bit"}, "'optim: paged_adamw_8bit' runs on bitsandbytes"),
    ({"optimizer": "muon", "finetuning_type": "lora", "loraplus_lr_ratio": 16.0},
     "'optimizer: muon' and 'loraplus_lr_ratio' both build the optimizer: choose one"),
])
def test_optimizers_that_cannot_run_here_are_config_errors(extra, message, tiny_model_dir, tmp_path, capsys,
                                                           monkeypatch):
    """The package an `optim` name needs, missing (as it is where it was never installed): one line naming it."""
    from lmforge.config import validate

    missing = {"galore_adamw": "galore_torch", "adamw_torch_8bit": "torchao",
               "paged_adamw_8bit": "bitsandbytes"}.get(extra.get("optim"))
    monkeypatch.setattr(validate, "installed", lambda module: module != missing)
    assert main(["train", *_values(tiny_model_dir, tmp_path / "x", {**SFT, **extra})]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_a_mixture_of_experts_with_lora_is_planned_as_measured(real_model, tmp_path):
    """Qwen3-MoE (the published config, made tiny: 4 experts, top 2) with LoRA over every linear and expert: the
    experts stay bf16, which torch's grouped matmul takes over fake tensors too; the planned peak is the measured one
    (measured: 0.99999). Its speed counts the FLOPs of the experts a token runs, not of all of them."""
    from lmforge.config.architecture import num_experts
    from lmforge.train.plan.fit import speed

    model_dir = real_model("qwen3-moe")
    recipe = {**SFT, "finetuning_type": "lora", "lora_target": "all", "cutoff_len": 64}
    measured = _measured(model_dir, tmp_path / "run", recipe)
    cfg = load_config(None, _values(model_dir, tmp_path / "plan", recipe))
    step = trace_step(cfg)
    assert step.memory.total == pytest.approx(measured["total"], rel=0.02), (step.memory.as_dict(), measured)
    assert step.memory.parameters == measured["parameters"]
    text = step.config.get_text_config()
    count, top_k = num_experts(step.config), text.num_experts_per_tok
    assert 1 < top_k < count
    experts = text.num_hidden_layers * count * 3 * text.hidden_size * text.moe_intermediate_size
    assert step.expert_parameters == experts  # the routed experts' weights (the adapters over them are not)
    one_device = Devices("a device", 1, 2**40, 100.0)
    dense = speed(cfg, replace(step, expert_parameters=0), one_device).flops_per_token
    routed = speed(cfg, step, one_device).flops_per_token
    assert dense - routed == pytest.approx(4 * experts * (1 - top_k / count))  # LoRA: 4 FLOPs per weight, token


def test_a_memory_report_of_a_compiled_optimizer_step_is_a_config_error(tiny_model_dir, tmp_path, capsys):
    args = _values(tiny_model_dir, tmp_path / "x", {**SFT, "optim": "adamw_torch_4bit", "memory_report": True})
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "torchao's 'optim: adamw_torch_4bit' compiles its step: drop 'memory_report'" in err
    assert "Traceback" not in err


def test_a_step_fake_tensors_cannot_run_is_one_clear_line(real_model, tmp_path, capsys):
    """Qwen3-MoE trained fully: its experts' float32 master weights meet torch's grouped matmul, whose fake-tensor
    kernel takes bf16 only."""
    args = _values(real_model("qwen3-moe"), tmp_path / "x", {**SFT, "cutoff_len": 32})
    capsys.readouterr()  # (the fixture's progress bars)
    assert main(["plan", *args, "--gpus", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmforge plan: the step of 'qwen3_moe' cannot be traced over fake tensors (")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
