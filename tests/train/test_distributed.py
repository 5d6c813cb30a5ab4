"""Several processes: `lmforge train` relaunches itself under torchrun; 2-process DDP (gloo, CPU) trains exactly like
one process with the same global batch; DeepSpeed/FSDP configs are checked and shipped."""

import json
import signal
import subprocess
import sys

import pytest

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.launch import LaunchArguments
from lmforge.errors import ConfigError
from lmforge.launch import torchrun_command
from lmforge.train.runtime.checkpoint import list_checkpoints
from tests.conftest import REPO, scratch_args
from tests.train.test_resume import losses, sft_args, start_training, wait_for_step

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


def run_lmforge_train(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", "train", *args], capture_output=True, text=True,
                          timeout=600)


RUNS = {
    "pt": lambda model_dir, out, batch: scratch_args(out, max_steps=8, logging_steps=1, save_strategy="no",
                                                     per_device_train_batch_size=batch),
    "sft-packing": lambda model_dir, out, batch: sft_args(model_dir, out, max_steps=8, save_strategy="no",
                                                          packing=True, per_device_train_batch_size=batch),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(run, tiny_model_dir, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(["train", *RUNS[run](tiny_model_dir, single, 4)]) == 0
    proc = run_lmforge_train([*RUNS[run](tiny_model_dir, ddp, 2), "nproc_per_node=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.distributed.run --nproc_per_node=2" in proc.stderr  # it relaunched itself
    one, two = losses(single), losses(ddp)
    assert sorted(two) == list(range(1, 9))
    for step in range(1, 9):
        assert two[step] == pytest.approx(one[step], rel=1e-4), step
    assert one[8] < one[1]


def test_sigterm_under_torchrun_stops_every_rank_at_the_same_step(tmp_path):
    out = tmp_path / "ddp"
    proc = start_training([*scratch_args(out, max_steps=2000, logging_steps=1, save_steps=5000, max_samples=600,
                                         per_device_train_batch_size=4), "nproc_per_node=2"])
    wait_for_step(out, proc, 3)
    proc.send_signal(signal.SIGTERM)  # to torchrun (lmforge exec'd it), which forwards it to both workers
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    complete, incomplete = list_checkpoints(str(out))
    assert len(complete) == 1 and not incomplete
    step = int(complete[0].rsplit("-", 1)[1])
    assert "Stopped by SIGTERM after step" in stderr
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / f"checkpoint-{step}").iterdir()}


# ---- the launch command ---------------------------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch):
    for name in ("LOCAL_RANK", "RANK", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def launch_args(*overrides: str):
    return load_config(None, ["dataset=x", "output_dir=o", "model_name_or_path=m", *overrides]).launch


def test_one_process_runs_in_place(clean_env):
    assert torchrun_command(launch_args(), ["cfg.yaml"]) is None


def test_one_machine_uses_a_standalone_rendezvous(clean_env):
    command = torchrun_command(launch_args("nproc_per_node=4"), ["cfg.yaml", "lr=1"])
    assert command[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node=4", "--nnodes=1"]
    assert "--standalone" in command
    assert command[-5:] == ["-m", "lmforge", "train", "cfg.yaml", "lr=1"]


def test_multi_node_from_environment_variables(clean_env):
    for name, value in {"NPROC_PER_NODE": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1",
                        "MASTER_PORT": "29600"}.items():
        clean_env.setenv(name, value)
    command = torchrun_command(LaunchArguments(), ["cfg.yaml"])
    for flag in ("--nproc_per_node=8", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
                 "--master_port=29600"):
        assert flag in command
    assert "--standalone" not in command
    # config keys win over the environment
    assert "--node_rank=0" in torchrun_command(LaunchArguments(node_rank=0), ["cfg.yaml"])


def test_already_launched_processes_run_in_place(clean_env):
    args = launch_args("nproc_per_node=2")
    clean_env.setenv("LOCAL_RANK", "0")
    assert torchrun_command(args, ["cfg.yaml"]) is None


@pytest.mark.parametrize("overrides, message", [
    (["nnodes=2"], "needs 'master_addr'"),
    (["nnodes=2", "node_rank=2", "master_addr=h"], "'node_rank' must be in 0..1"),
    (["nproc_per_node=0"], "must be at least 1"),
])
def test_launch_settings_that_cannot_work_are_clear_errors(clean_env, overrides, message):
    with pytest.raises(ConfigError, match=message):
        torchrun_command(launch_args(*overrides), [])


# ---- DeepSpeed and FSDP ---------------------------------------------------------------------------------------------

def test_deepspeed_configs_ship_for_every_zero_stage():
    stages = {}
    for path in sorted((REPO / "examples" / "deepspeed").glob("*.json")):
        zero = json.loads(path.read_text())["zero_optimization"]
        stages[path.stem] = (zero["stage"], "offload_optimizer" in zero, "offload_param" in zero)
    assert stages == {"ds_z0_config": (0, False, False), "ds_z1_config": (1, False, False),
                      "ds_z2_config": (2, False, False), "ds_z2_offload_config": (2, True, False),
                      "ds_z3_config": (3, False, False), "ds_z3_offload_config": (3, True, True)}


def test_deepspeed_problems_are_clear_errors(tmp_path, capsys):
    base = ["dataset=x", f"output_dir={tmp_path / 'o'}", "model_name_or_path=m"]
    assert main(["train", *base, "deepspeed=missing.json"]) == 2
    assert "'deepspeed': the file 'missing.json' does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{stage: 3")
    assert main(["train", *base, f"deepspeed={bad}"]) == 2
    assert "'deepspeed' must be a JSON file" in capsys.readouterr().err
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        ds = str(REPO / "examples" / "deepspeed" / "ds_z2_config.json")
        assert main(["train", *base, f"deepspeed={ds}"]) == 2
        assert "needs the DeepSpeed package" in capsys.readouterr().err


def test_distributed_example_configs_load():
    ddp = load_config(str(REPO / "examples" / "distributed" / "sft_ddp_2gpu.yaml"))
    assert ddp.launch.nproc_per_node == 2
    fsdp = load_config(str(REPO / "examples" / "distributed" / "sft_fsdp.yaml"))
    assert fsdp.training.fsdp and fsdp.training.fsdp_config["transformer_layer_cls_to_wrap"] == ["Qwen2DecoderLayer"]
    assert (REPO / "examples" / "accelerate" / "fsdp_config.yaml").is_file()


def test_the_local_rank_argument_of_the_deepspeed_launcher_is_accepted(capsys):
    assert main(["--local_rank=0", "version"]) == 0
    assert capsys.readouterr().out.strip()[0].isdigit()  # the version, not "unknown command"
    assert main(["train", "--local-rank", "1", "--help"]) == 0


RL_VOWELS = '''
def vowel_share(prompts, completions, **columns):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


def _rl_args(stage: str, model_dir: str, out, reward_funcs: str = "", batch: int = 2, **extra) -> list[str]:
    args = {"stage": stage, "model_name_or_path": model_dir, "template": "chatml", "dataset": "lmforge_sft_quickstart",
            "max_samples": 64, "cutoff_len": 64, "output_dir": str(out), "per_device_train_batch_size": batch,
            "rollout_batch_size": 4, "learning_rate": 5e-3, "max_steps": 3, "logging_steps": 1,
            "save_steps": 2, "report_to": "none", "disable_tqdm": True, "seed": 3, "max_new_tokens": 6,
            "temperature": 1.0, "top_p": 1.0, "top_k": 0, "reward_funcs": reward_funcs,
            **({"kl_coef": 0.05} if stage != "online_dpo" else {}),  # online DPO's reference is in its loss
            **({"num_generations": 2} if stage == "grpo" else {}), **extra}
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items()]


@pytest.mark.parametrize("stage, extra", [("grpo", {"loss_type": "dapo"}), ("grpo", {"loss_type": "bnpo"}),
                                          ("ppo", {}), ("online_dpo", {})],
                         ids=["grpo-dapo", "grpo-bnpo", "ppo", "online_dpo"])
def test_two_process_rl_matches_one_process_with_twice_the_batch(stage, extra, tiny_model_dir, tmp_path):
    """Same seeds: the same completions (rewards), per-step losses within 1e-4, the same weights after 3 steps."""
    from safetensors.torch import load_file

    reward = tmp_path / "vowels.py"
    reward.write_text(RL_VOWELS)
    reward_func = f"{reward}:vowel_share"
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(["train", *_rl_args(stage, tiny_model_dir, single, reward_func, 4, **extra)]) == 0
    proc = run_lmforge_train([*_rl_args(stage, tiny_model_dir, ddp, reward_func, 2, **extra), "nproc_per_node=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = [json.loads(line) for line in open(single / "trainer_log.jsonl")]
    two = [json.loads(line) for line in open(ddp / "trainer_log.jsonl")]
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        assert b["reward"] == pytest.approx(a["reward"], abs=1e-6)  # the same completions
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4), (a, b)
    w1, w2 = load_file(single / "model.safetensors"), load_file(ddp / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


@pytest.mark.parametrize("stage, extra", [("grpo", {}), ("ppo", {}),
                                          ("grpo", {"finetuning_type": "lora", "lora_target": "all"})],
                         ids=["grpo", "ppo", "grpo-lora"])
def test_fsdp2_sharded_rl_matches_one_process_and_resumes_exactly(stage, extra, tiny_model_dir, tmp_path):
    """`data_shard_size: 2`: policy and reference sharded by FSDP2 over 2 processes; the same completions, losses
    and weights as one process with twice the batch; a checkpoint resumed in a fresh directory continues exactly."""
    import shutil

    from safetensors.torch import load_file

    reward = tmp_path / "vowels.py"
    reward.write_text(RL_VOWELS)
    reward_func = f"{reward}:vowel_share"
    single, sharded, resumed = tmp_path / "single", tmp_path / "sharded", tmp_path / "resumed"
    assert main(["train", *_rl_args(stage, tiny_model_dir, single, reward_func, 4, **extra)]) == 0
    run = [*_rl_args(stage, tiny_model_dir, sharded, reward_func, 2, **extra), "nproc_per_node=2",
           "data_shard_size=2", 'sample_prompts=["Hi"]']  # (the samples at the end: every process generates)
    proc = run_lmforge_train(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Parallelism: FSDP2 shard 2; each step samples 4 prompts" in proc.stderr
    one = [json.loads(line) for line in open(single / "trainer_log.jsonl")]
    two = [json.loads(line) for line in open(sharded / "trainer_log.jsonl")]
    for a, b in zip(one, two, strict=True):
        assert b["reward"] == pytest.approx(a["reward"], abs=1e-6)
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4), (a, b)
    weights = "adapter_model.safetensors" if extra else "model.safetensors"
    w1, w2 = load_file(single / weights), load_file(sharded / weights)
    assert set(w1) == set(w2) and max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    resumed.mkdir()
    shutil.copytree(sharded / "checkpoint-2", resumed / "checkpoint-2")
    proc = run_lmforge_train([*[a.replace(str(sharded), str(resumed)) for a in run], "resume_from_checkpoint=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    [last] = [json.loads(line) for line in open(resumed / "trainer_log.jsonl")]
    assert last["step"] == 3 and last["loss"] == two[-1]["loss"]
    w3 = load_file(resumed / weights)
    assert all(torch_equal(w2[k], w3[k]) for k in w2)


def test_two_process_grpo_stopped_by_sigterm_and_resumed_equals_the_uninterrupted_run(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    reward = tmp_path / "vowels.py"
    reward.write_text(RL_VOWELS)
    settings = {"max_steps": 8, "save_steps": 100, "reward_funcs": f"{reward}:vowel_share"}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_lmforge_train([*_rl_args("grpo", tiny_model_dir, straight, batch=2, **settings),
                              "nproc_per_node=2"]).returncode == 0
    proc = start_training([*_rl_args("grpo", tiny_model_dir, stopped, batch=2, **settings), "nproc_per_node=2"])
    wait_for_step(stopped, proc, 2)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers; they stop at the same step
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    complete, incomplete = list_checkpoints(str(stopped))
    assert len(complete) == 1 and not incomplete
    resumed = run_lmforge_train([*_rl_args("grpo", tiny_model_dir, stopped, batch=2, resume_from_checkpoint="true",
                                           **settings), "nproc_per_node=2"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _log_without_timings(straight), _log_without_timings(stopped)
    assert [r["step"] for r in b] == list(range(1, 9))
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-6), (x, y)
    w1, w2 = load_file(straight / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert all(torch_equal(w1[k], w2[k]) for k in w1)


def torch_equal(a, b) -> bool:
    return bool((a - b).abs().max() <= 1e-6)


def _log_without_timings(out) -> list[dict]:
    from tests.train.test_rl import without_timings

    return [without_timings(json.loads(line)) for line in open(out / "trainer_log.jsonl")]
