import json
import os
import struct
import subprocess
import sys

import pytest

from lmforge import __version__
from lmforge.cli import main
from tests.conftest import LF_DEMO, REPO, scratch_args, write_jsonl


def run_cli(*args, env=None):
    """The real console entry point in a subprocess: exit code and output exactly as a user sees them."""
    return subprocess.run([sys.executable, "-m", "lmforge", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=300)


def test_version_env_help(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("python", "torch", "transformers", "datasets", "peft", "trl", "accelerate", "device"):
        assert f"- {name}:" in out
    assert main(["help"]) == 0
    assert "lmforge train CONFIG.yaml" in capsys.readouterr().out
    assert main(["help", "train"]) == 0
    out = capsys.readouterr().out
    assert "cutoff_len (int, default 1024)" in out and "learning_rate" in out


def test_unknown_command_suggests(capsys):
    assert main(["trian"]) == 2
    assert "Did you mean 'train'?" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_config_exits_2_with_one_paragraph_and_no_traceback(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("stage: pt\nfrom_scratch: true\nmodel_type: qwen2\ntrain_tokenizer: true\n"
                   "dataset: lmforge_quickstart\noutput_dir: out\nlearning_rte: 1.0e-3\n")
    result = run_cli("train", str(cfg))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown key 'learning_rte'. Did you mean 'learning_rate'?" in result.stderr
    assert str(cfg) in result.stderr
    assert main(["train", str(cfg), "learning_rte=null", "cutoff_len=many"]) == 2  # in this process: the same path


@pytest.mark.slow
def test_malformed_data_exits_2_naming_file_and_line(tmp_path):
    bad = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "fine"}, '{"text": oops}'])
    result = run_cli("train", *scratch_args(tmp_path / "out", dataset=str(bad)),
                     env={"LMFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "corpus.jsonl' line 2: invalid JSON" in result.stderr


def test_missing_tracker_package_gives_an_install_hint(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    code = main(["train", *scratch_args(tmp_path / "out", report_to="wandb")])
    assert code == 2
    assert "pip install 'lmforge[wandb]'" in capsys.readouterr().err


SECRET = "hf_lmforgeSecret0123456789"


def _logged_losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]


def _files_holding(directory, needle: str) -> list[str]:
    return [os.path.join(root, f) for root, _, files in os.walk(directory) for f in files
            if needle.encode() in open(os.path.join(root, f), "rb").read()]


@pytest.mark.slow
def test_tensorboard_logs_the_loss_and_no_file_holds_a_secret(tmp_path):
    """Run as a user would (a child process, the token on the command line): TensorBoard's event file holds the
    losses of trainer_log.jsonl, and no file in output_dir (config, checkpoints, events) holds the token."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    result = subprocess.run([sys.executable, "-m", "lmforge", "train", *scratch_args(
        out, max_steps=6, logging_steps=2, save_steps=3, report_to="tensorboard", hub_token=SECRET)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [root for root, _, fs in os.walk(out) for f in fs if f.startswith("events.out")]
    accumulator = EventAccumulator(events[0])
    accumulator.Reload()
    logged = [e.value for e in accumulator.Scalars("train/loss")]
    assert logged == pytest.approx(_logged_losses(out), rel=1e-6) and len(logged) == 3
    assert (out / "checkpoint-3" / "training_args.bin").exists()
    assert _files_holding(out, SECRET) == []
    assert "hub_token: '***'" in (out / "lmforge_config.yaml").read_text()


@pytest.mark.slow
def test_bench_reports_speed_and_memory(tmp_path, capsys):
    assert main(["bench", *scratch_args(tmp_path / "b"), "--steps", "4", "--warmup", "1",
                 "--json", str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr().out
    for label in ("real tokens/s", "achieved FLOP/s", "fraction of peak", "peak memory", "time to first step"):
        assert label in out
    with open(tmp_path / "bench.json") as fh:
        result = json.load(fh)
    assert result["timed_steps"] == 4
    assert result["tokens_per_step"] == 8 * 64
    assert result["real_tokens_per_second"] > 0 and 0 < result["fraction_of_peak"]


@pytest.mark.slow
def test_swanlab_offline_mode_logs_locally_through_its_callback(tmp_path):
    pytest.importorskip("swanlab")
    out = tmp_path / "swan"
    assert main(["train", *scratch_args(out, max_steps=6, report_to="swanlab", swanlab_mode="offline",
                                        swanlab_project="lmforge-test", sample_prompts=["Hi"], max_new_tokens=3)]) == 0
    runs = [os.path.join(root, f) for root, _, fs in os.walk(out / "swanlog") for f in fs if f.endswith(".swanlab")]
    assert len(runs) == 1, "SwanLab wrote no offline run log under output_dir/swanlog"
    record = open(runs[0], "rb").read()  # SwanLab's protobuf records: the key, and each value as a double
    assert b"train/loss" in record
    assert all(struct.pack("<d", loss) in record for loss in _logged_losses(out))


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("lmforge")
    assert exe, "the `lmforge` console script is not on PATH: install the package (pip install -e .)"
    result = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == __version__


HEAVY = ("torch", "transformers", "peft", "trl", "datasets")


def imported_after(argv: list[str], modules: tuple[str, ...] = HEAVY) -> tuple[int, str, list[str]]:
    """(exit code, stderr, which of `modules` are imported) after `lmforge ARGV` in a fresh interpreter. Where the
    installed transformers is not the release the stored TrainingArguments fields were written from, the first
    command reads them from the class once (importing it) and caches them, as for a user after an upgrade: that is
    done here first, into this test's cache."""
    from lmforge.config.trainer_fields import described_fields

    described_fields()
    code = ("import sys\nfrom lmforge.cli import main\ncode = main(sys.argv[1:])\n"
            f"print(code, sorted(m for m in {modules!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.stdout.splitlines(), out.stderr[-2000:]
    exit_code, imported = out.stdout.splitlines()[-1].split(" ", 1)
    return int(exit_code), out.stderr, eval(imported)


@pytest.mark.parametrize("argv", [[], ["--help"], ["version"], ["--version"], ["help", "config"],
                                  ["help", "train"], ["help", "config", "--markdown"], ["env"]], ids=repr)
def test_usage_help_version_and_env_import_no_training_library(argv):
    """The command line answers these without importing the training stack (a fresh interpreter each)."""
    exit_code, err, imported = imported_after(argv)
    assert (exit_code, imported) == (0, []), err[-2000:]


SFT = ["stage=sft", "model_name_or_path=Qwen/Qwen3-0.6B", "dataset=alpaca_en_demo", "output_dir=out"]


@pytest.mark.parametrize(("argv", "message"), [
    (["train", *SFT, "learning_rat=1e-4"], "unknown key 'learning_rat'. Did you mean 'learning_rate'?"),
    (["train", *SFT, "eval_strategy=stepz"], "'eval_strategy' expects one of 'no', 'steps', 'epoch', but got "
                                             "'stepz' (str). Did you mean 'steps'?"),
    (["train", *SFT, "per_device_train_batch_size=two"], "'per_device_train_batch_size' expects int"),
    (["train", *SFT[:3]], "'output_dir' is required"),
    (["train", *SFT, "cutoff_len=1"], "'cutoff_len' must be at least 2, got 1."),
    (["train", *SFT, "streaming=true"], "'streaming: true' needs 'max_steps'"),
    (["train", *SFT, "bf16=true", "fp16=true"], "'bf16' and 'fp16' exclude each other"),
    (["train", *SFT, "stage=pt", "tokenized_dir=prepared"], "'tokenized_dir' holds a stage's encoded examples"),
    (["data", "preview", *SFT, "finetuning_type=lora", "lora_rank=0"], "'lora_rank' must be at least 1, got 0."),
    (["data", "prepare", *SFT, "template=chatml", "max_samples=0.5"], "'max_samples' expects int"),
], ids=lambda v: v[1] if isinstance(v, list) else None)
def test_config_errors_answer_before_any_training_library_is_imported(argv, message):
    exit_code, err, imported = imported_after(argv)
    assert (exit_code, imported) == (2, []), err[-2000:]
    assert message in err and "Traceback" not in err


def test_data_commands_import_only_the_data_stack(real_model, tmp_path):
    """`lmforge data preview` of a real checkpoint's data: tokenizer, datasets and the encoder; no model code,
    adapters, RL library or TrainingArguments."""
    argv = ["data", "preview", "stage=sft", f"model_name_or_path={real_model('qwen3')}", "dataset=alpaca_en_demo",
            f"dataset_dir={LF_DEMO}", "max_samples=20", "--num", "1"]
    training_stack = ("peft", "trl", "accelerate", "transformers.training_args", "transformers.modeling_utils",
                      "transformers.trainer")
    exit_code, err, imported = imported_after(argv, ("datasets", "tokenizers", *training_stack))
    assert exit_code == 0, err[-2000:]
    assert imported == ["datasets", "tokenizers"]


def test_usage_puts_each_description_under_its_command(capsys):
    assert main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    score = next(i for i, line in enumerate(lines) if line.strip().startswith("lmforge score "))
    assert "reward" in lines[score + 1] and "process reward model" in lines[score + 2]
    synth = next(i for i, line in enumerate(lines) if line.strip().startswith("lmforge synth "))
    assert "teacher" in lines[synth] and lines[synth + 1].strip().startswith("lmforge chat ")


def test_usage_lists_every_stage(capsys):
    from lmforge.config.stages import STAGES

    main([])
    usage = capsys.readouterr()
    text = usage.out + usage.err
    line = next(line for line in text.splitlines() if "lmforge train CONFIG.yaml" in line)
    assert all(stage in line for stage in STAGES) and len(STAGES) == 11


@pytest.mark.slow
def test_the_gpu_check_suite_runs_its_checks_on_a_cpu_smoke_model(tmp_path):
    """`lmforge bench --suite gpu --smoke` (what bench/gpu_check.sh runs on a GPU with the 0.5B shape): every
    check passes or is skipped with its reason, and the JSON and table are written."""
    assert main(["bench", "--suite", "gpu", "--smoke", "--output", str(tmp_path / "gpu"), "--steps", "2"]) == 0
    report = json.loads((tmp_path / "gpu" / "gpu_check.json").read_text())
    statuses = {name: r["status"] for name, r in report["checks"].items()}
    assert statuses == {"build_model": "pass", "matmul": "pass", "sft": "pass", "losses": "pass", "packing": "pass",
                        "serve": "pass", "fsdp2": "skip", "deepspeed": "skip", "vlm": "skip", "vllm_rollouts": "skip",
                        "tensor_parallel": "pass", "context_parallel": "skip", "sequence_parallel": "skip",
                        "expert_parallel": "skip", "plan": "pass", "low_bit": "skip",
                        "fp8": "skip", "reasoning_rl": "pass", "prepared_data": "pass"}
    rl = report["checks"]["reasoning_rl"]  # GRPO and online DPO with math_verify and format, 2 steps each
    assert rl["grpo_steps"] == rl["online_dpo_steps"] == 2
    assert report["checks"]["prepared_data"]["help_seconds"] < report["checks"]["prepared_data"]["train_seconds"]
    assert report["checks"]["tensor_parallel"]["max_relative_loss_difference"] < 1e-4  # float32 over gloo
    assert "torchvision" in report["checks"]["vlm"]["reason"]  # its CPU run: tests/train/test_multimodal_train.py
    assert report["checks"]["packing"]["relative_difference"] < 1e-4
    assert 0.9 < report["checks"]["plan"]["planned_over_measured"] < 1.1
    assert report["checks"]["serve"]["tokens_per_second_32"] > 0
    assert "| sft | pass |" in (tmp_path / "gpu" / "gpu_check.md").read_text()


def test_a_model_folder_not_written_yet_fails_at_once_naming_it(tmp_path):
    """`saves/quickstart` before the pretraining quickstart has run reads as a hub id; where the hub cannot be
    reached, the error says so at the first look instead of after transformers' retries."""
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "data", "preview", "stage=sft", "model_name_or_path=saves/not-written-yet",
         "dataset=alpaca_en_demo", f"dataset_dir={LF_DEMO}", "template=chatml"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9",
             "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 2, result.stderr[-2000:]
    assert ("could not load a tokenizer from 'saves/not-written-yet': there is no such folder here, and the hub "
            "could not be reached to look for a model of that name") in result.stderr
    assert "Traceback" not in result.stderr
