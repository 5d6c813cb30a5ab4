"""`rollout_backend: vllm`: the parts that run without vLLM (config errors, the weights handed to it, the layout of
its completions, the rollout server's command line). The engines themselves run in the GPU check."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lmforge.cli import main
from tests.train.test_rl import rl_args

VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(VLLM_INSTALLED, reason="the error for a missing vLLM")
def test_vllm_rollouts_without_vllm_are_a_config_error(tiny_model_dir, tmp_path, capsys):
    args = rl_args("grpo", tiny_model_dir, tmp_path / "x", reward_funcs="lmforge.rewards:exact_match",
                   rollout_backend="vllm")
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "'rollout_backend: vllm' needs vLLM installed" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    ({}, "'vllm_mode: colocate' runs vLLM inside the training processes and needs CUDA GPUs"),
    ({"vllm_mode": "server"}, "'vllm_mode: server' pushes the weights to the rollout server over NCCL"),
    ({"cuda": True, "env_funcs": "lmforge.rewards:exact_match"}, "'env_funcs' (multi-turn tool use) rolls out with "
     "'rollout_backend: hf' only"),
    ({"cuda": True, "finetuning_type": "lora", "use_dora": True}, "'use_dora' with 'rollout_backend: vllm'"),
    ({"cuda": True, "vllm_gpu_memory_utilization": 1.5}, "'vllm_gpu_memory_utilization' must be in (0, 1]"),
    ({"cuda": True, "vllm_mode": "server", "vllm_server_base_url": "localhost:8000"}, "must be an http(s) URL"),
])
def test_vllm_settings_that_cannot_work_are_clear_errors(tiny_model_dir, tmp_path, capsys, monkeypatch, extra,
                                                         message):
    """With vLLM importable (as on a GPU machine), what still cannot work is named."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm"
                        else real_find_spec(name, *a))
    monkeypatch.setattr("lmforge.device.cuda_available", lambda: extra.get("cuda", False))
    settings = {k: v for k, v in extra.items() if k != "cuda"}
    args = rl_args("grpo", tiny_model_dir, tmp_path / "x", reward_funcs="lmforge.rewards:exact_match",
                   rollout_backend="vllm", **settings)
    assert main(["train", *args]) == 2
    assert message in capsys.readouterr().err


def test_merged_weights_are_the_merged_model_under_its_plain_names(tiny_model_dir):
    """What vLLM loads after an update: a LoRA policy's weights merged (the adapter's update added) under the base
    model's own names, the training model left exactly as it was (no merge/unmerge rounding)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmforge.train.rl.vllm_rollout import merged_weights

    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]))
    for name, param in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # a trained adapter (B starts at zero)
        if "modules_to_save" in name:
            param.data.add_(1.0)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    weights = dict(merged_weights(policy))
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())
    merged = policy.merge_and_unload()
    expected = dict(merged.named_parameters())
    assert set(weights) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor.detach(), rtol=0, atol=1e-6, msg=name)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert set(weights) == {n for n, _ in plain.named_parameters()}
    assert not torch.equal(weights["lm_head.weight"], plain.lm_head.weight)  # the trained copy, not the original


def test_completions_from_an_engine_are_laid_out_as_the_kv_cache_sampler_lays_them_out(tiny_model_dir):
    """Token lists from vLLM become the same Rollout the hf sampler makes: left-padded prompts, completions valid up
    to and including the first stop token, truncated when there is none (a pad id that is also a stop id does not
    count)."""
    from transformers import AutoModelForCausalLM

    from lmforge.config.generation import GenerationArguments
    from lmforge.train.rl.rollout import rollout_from_tokens, sample_completions

    rollout = rollout_from_tokens([[5, 6, 7], [8]], [[9, 2, 4], [10, 11]], pad_id=2, stop_ids=[2, 3])
    assert rollout.prompt_width == 3
    assert rollout.input_ids.tolist() == [[5, 6, 7, 9, 2, 4], [2, 2, 8, 10, 11, 2]]
    assert rollout.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0]]
    assert rollout.completion_mask.tolist() == [[1, 1, 0], [1, 1, 0]]
    assert rollout.truncated.tolist() == [False, True]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    sampled = sample_completions(model, prompts, GenerationArguments(max_new_tokens=6, temperature=1.0, top_p=1.0,
                                                                     top_k=0), 0, [1], seeds=[3, 4])
    tokens = [row[sampled.prompt_width:][mask.bool()].tolist()
              for row, mask in zip(sampled.input_ids, sampled.completion_mask, strict=True)]
    again = rollout_from_tokens(prompts, tokens, 0, [1])
    for key in ("input_ids", "attention_mask", "completion_mask", "truncated"):
        assert torch.equal(getattr(again, key), getattr(sampled, key)), key


def test_rollout_server_is_vllms_server_as_trl_clients_expect_it(tiny_model_dir, capsys):
    from lmforge.config.parse import load_target_config
    from lmforge.serve.rollout_server import rollout_server_command

    cfg = load_target_config("serve", tiny_model_dir, ["port=8123", "vllm_gpu_memory_utilization=0.8"])
    command = rollout_server_command(cfg)
    assert command[command.index("serve") + 1] == tiny_model_dir
    assert command[command.index("--port") + 1] == "8123"
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.8"
    assert '{"backend": "nccl"}' in command  # the weight-transfer engine the training pushes weights through
    if not VLLM_INSTALLED:
        assert main(["rollout-server", tiny_model_dir]) == 2
        assert "needs vLLM installed" in capsys.readouterr().err
