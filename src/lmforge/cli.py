"""`lmforge` command line: each subcommand maps to one function; no logic of its own lives here."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from lmforge import __version__
from lmforge.errors import ConfigError, LmforgeError

USAGE = """lmforge {version}: one framework for the whole life of a language model.

Usage:
  lmforge train CONFIG.yaml [key=value ...]   train (stage from the config: {stages})
  lmforge data preview CONFIG.yaml [--num N] [--json]
                                              show examples with the trained tokens marked, and length statistics
  lmforge data dump CONFIG.yaml --output F    write every processed example (input_ids, labels) as JSON lines
  lmforge data prepare CONFIG.yaml            tokenize the run's data into the cache `train` reads, and report it
  lmforge eval [CONFIG.yaml] [key=value ...]  evaluate a model: a multiple-choice benchmark (mmlu/cmmlu/ceval
                                              layout), perplexity or generation; writes results.json
  lmforge eval ... --harness TASKS            run lm-evaluation-harness tasks with the model (`harness` extra)
  lmforge score RM_DIR INPUT.jsonl [--output F] [--batch-size N] [--reduction R]
                                              score lines ({{"messages": [...]}} or {{"text": ...}}) with a reward
                                              model, or each step of replies with a process reward model
  lmforge predict CLASSIFIER INPUT [--output F]  labels and probabilities of a `stage: cls` model for each row
  lmforge synth CONFIG.yaml [key=value ...]   data from a teacher's OpenAI-compatible endpoint (answer, judge, rewrite)
  lmforge chat MODEL [key=value ...]          chat in the terminal (MODEL: a config, a model or adapter dir)
  lmforge api MODEL [key=value ...]           OpenAI-compatible server: /v1/chat/completions, /v1/completions
  lmforge rollout-server MODEL [key=value ...]
                                              vLLM server for `vllm_mode: server` online-stage rollouts (host, port)
  lmforge webui [key=value ...]               web UI: build and run training, watch the loss, eval, chat, export
  lmforge webchat MODEL [key=value ...]       a chat-only web page
  lmforge export MODEL export_dir=OUT [...]   merge an adapter and save safetensors (+ GGUF, Ollama Modelfile)
  lmforge merge CONFIG.yaml [key=value ...]   merge fine-tunes of one base (linear, SLERP, TIES, DARE) via mergekit
  lmforge bench CONFIG.yaml [key=value ...]   measure training speed: tokens/s, FLOP/s, peak memory
  lmforge plan CONFIG.yaml [--gpus 8xH100-80GB | --gpu-memory 24GiB --gpus 2] [--json]
                                              will it fit, how fast: the step traced without weights or a GPU,
                                              and the cheapest change that makes it fit
  lmforge env [MODEL]                         versions and devices; with MODEL, what it takes (text, image)
  lmforge version                             print the version
  lmforge help [train|eval|serve|export|merge|config]
                                              this text, or every config key with its type, default and help

Overrides on the command line win over the YAML file: `key=value`, `--key value` or `--key=value`.
"""


def _usage() -> str:
    from lmforge.config.stages import stage_names

    return USAGE.format(version=__version__, stages=", ".join(stage_names()))


def cmd_train(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(_usage() if not args else _reference(False, "train"))
        return 0 if args else 2
    from lmforge.config import load_config
    from lmforge.launch import run_launcher, torchrun_command
    from lmforge.logs import setup_logging
    from lmforge.train import stage_runner

    setup_logging()
    config_path, overrides = _split_config_path(args)
    cfg = load_config(config_path, overrides)
    from lmforge.train.runtime.checkpoint import finished_at
    from lmforge.train.runtime.output_dir import RunLock, claim_output_dir
    from lmforge.train.runtime.run_record import run_record

    t = cfg.training
    if t.resume_from_checkpoint is not None and (step := finished_at(t.output_dir, t.max_steps,
                                                                     t.num_train_epochs)) is not None:
        # resuming from its last checkpoint would train the steps after it again and overwrite the final model
        print(f"[lmforge] {t.output_dir} holds a finished run (step {step}): nothing to resume. To train further, "
              "raise max_steps (or num_train_epochs) and resume again.", file=sys.stderr)
        return 0
    with RunLock(cfg.training.output_dir) as lock:  # before anything is written: one run per output_dir
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun the first process speaks for the run
            claim_output_dir(cfg.training.output_dir, cfg.training.resume_from_checkpoint is not None,
                             cfg.resilience.overwrite_output_dir)
        with run_record(cfg, speaks_for_run=lock.fd is not None) as record:
            command = torchrun_command(cfg.launch, args)
            if command:
                code = run_launcher(command)
                record["launcher_exit"] = code
                return code
            from lmforge.config.secrets import masked_argv

            sys.argv[:] = masked_argv(sys.argv)  # trackers record the command line
            record.update(stage_runner(cfg.finetuning.stage)(cfg) or {})
    return 0


def _split_config_path(args: list[str]) -> tuple[str | None, list[str]]:
    """(CONFIG.yaml or None, the key=value overrides after it)."""
    has_file = bool(args) and "=" not in args[0] and not args[0].startswith("--")
    return (args[0], args[1:]) if has_file else (None, args)


def _take_option(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """Remove `--name VALUE` or `--name=VALUE` from args."""
    for i, arg in enumerate(args):
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2:]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1:]
    return None, args


def _config_from(args: list[str]):
    """CONFIG.yaml [overrides]. Looking at data writes nothing there, so the required output_dir gets a placeholder
    (an output_dir given on the command line still wins); nothing trains, so transformers' TrainingArguments are not
    built (the checked values stand for them)."""
    from lmforge.config import load_config

    config_path, overrides = _split_config_path(args)
    return load_config(config_path, ["output_dir=lmforge-data-preview", *overrides], trainer=False)


def cmd_data(args: list[str]) -> int:
    action = args[0] if args else None
    if action not in ("preview", "dump", "prepare") or len(args) < 2 or args[1] in ("-h", "--help"):
        print("Usage: lmforge data preview CONFIG.yaml [key=value ...] [--num N] [--json]\n"
              "       lmforge data dump CONFIG.yaml [key=value ...] --output FILE.jsonl\n"
              "       lmforge data prepare CONFIG.yaml [key=value ...]   # tokenize into the cache `train` reads")
        return 0 if action and len(args) > 1 else 2
    from lmforge.logs import setup_logging

    setup_logging()  # the config is checked before the data stack is imported: a config error answers at once
    if action == "prepare":
        cfg = _config_from(args[1:])
        from lmforge.train.prepare import prepare, print_report

        print_report(prepare(cfg))
        return 0
    if action == "preview":
        num, rest = _take_option(args[1:], "num")
        if num is not None and not num.isdigit():
            raise ConfigError(f"Config error (command line): --num must be a whole number, got '{num}'.")
        cfg = _config_from([a for a in rest if a != "--json"])
        from lmforge.train import preview as data_preview

        data_preview.preview(cfg, int(num) if num is not None else 3, "--json" in rest)
        return 0
    output, rest = _take_option(args[1:], "output")
    if not output:
        raise ConfigError("Config error (command line): `lmforge data dump` needs --output FILE.jsonl.")
    cfg = _config_from(rest)
    from lmforge.train import preview as data_preview

    data_preview.dump(cfg, output)
    return 0


def cmd_eval(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print("Usage: lmforge eval [CONFIG.yaml] [key=value ...] [--harness TASKS]\n"
              "e.g. lmforge eval model_name_or_path=DIR task=cmmlu task_dir=PATH n_shot=5 max_samples=20 "
              "output_dir=OUT\n\n" + _reference(False, "eval"))
        return 0
    from lmforge.config.parse import load_eval_config
    from lmforge.eval.run import run_eval
    from lmforge.logs import setup_logging

    setup_logging()
    harness, args = _take_option(args, "harness")
    config_path, overrides = _split_config_path(args)
    cfg = load_eval_config(config_path, overrides + ([f"harness_tasks={harness}"] if harness else []))
    run_eval(cfg)
    return 0


def _command_config(schema: str, args: list[str], **checks):
    """TARGET [key=value ...]: TARGET is a YAML config, a model directory (or hub id) or a LoRA adapter directory."""
    from lmforge.config.parse import load_target_config

    target, overrides = _split_config_path(args)
    return load_target_config(schema, target, overrides, **checks)


# Packages of optional features -> the extra that installs them.
OPTIONAL_PACKAGES = {"fastapi": "serve", "uvicorn": "serve", "gradio": "webui", "pandas": "webui", "gguf": "gguf"}


def _serving_command(run_name: str, usage: str, schema: str = "serve", need_model: bool = True):
    """A subcommand that loads its config from TARGET [key=value ...] and runs `lmforge.<module>.<function>`."""
    module_name, function_name = run_name.rsplit(".", 1)
    checks = {} if need_model else {"need_model": False}

    def command(args: list[str]) -> int:
        if (need_model and not args) or (args and args[0] in ("-h", "--help")):
            print(f"Usage: {usage}\n\n" + _reference(False, schema))
            return 0 if args else 2
        import importlib

        from lmforge.logs import setup_logging

        setup_logging()
        cfg = _command_config(schema, args, **checks)
        try:
            getattr(importlib.import_module(module_name), function_name)(cfg)
        except ModuleNotFoundError as err:
            extra = OPTIONAL_PACKAGES.get((err.name or "").split(".")[0])
            if extra is None:
                raise
            from lmforge.errors import ConfigError

            raise ConfigError(f"`lmforge {usage.split()[1]}` needs the '{err.name}' package: "
                              f"pip install 'lmforge[{extra}]'") from None
        return 0

    return command


def _paths_or_usage(args: list[str], usage: str) -> int | None:
    """None when `args` are the two paths a file command takes; otherwise its usage is printed and the exit code
    returned (0 for --help)."""
    asked = bool(args) and args[0] in ("-h", "--help")
    if len(args) == 2 and not asked:
        return None
    print(usage)
    return 0 if asked else 2


def _emit(lines: list[str], summary: str, output: str | None) -> None:
    """A file command's results on stdout (unless written to `output`) and its summary on stderr."""
    if output is None:
        for line in lines:
            print(line)
    print(summary + (f"; written to {output}" if output else ""), file=sys.stderr)


def cmd_score(args: list[str]) -> int:
    output, args = _take_option(args, "output")
    batch_size, args = _take_option(args, "batch-size")
    reduction, args = _take_option(args, "reduction")
    usage = _paths_or_usage(
        args, "Usage: lmforge score RM_DIR INPUT.jsonl [--output SCORED.jsonl] [--batch-size N] [--reduction R]\n"
        "Each input line holds {\"messages\": [...]} (rendered with the reward model's chat template) or "
        "{\"text\": \"...\"} (scored as is).\n"
        "A process reward model (stage: prm) scores each step: a line holds the prompt ('prompt': text or messages, "
        "or 'messages') and the reply ('completions': its steps, or 'completion': text split at the model's step "
        "separator, or the last assistant message); 'score' is the steps' min (--reduction: min, last, mean, prod).")
    if usage is not None:
        return usage
    from lmforge.logs import setup_logging
    from lmforge.model.reward import score_file

    setup_logging()
    results = score_file(args[0], args[1], output, _batch_size(batch_size, 16), reduction)
    lines = [f"{r['score']:.6f}" + (f"\tsteps: {' '.join(f'{s:.4f}' for s in r['step_scores'])}"
                                    if "step_scores" in r else "") + f"\t{r['reply']}" for r in results]
    mean = sum(r["score"] for r in results) / len(results)
    _emit(lines, f"Scored {len(results):,} lines: mean {mean:.4f}", output)
    return 0


def _batch_size(value: str | None, default: int) -> int:
    """`--batch-size`: a positive whole number (a config error otherwise)."""
    if value is None:
        return default
    if not (value.isdigit() and int(value) > 0):
        raise ConfigError(f"Config error (command line): --batch-size must be a positive whole number, got "
                          f"'{value}'.")
    return int(value)


def cmd_predict(args: list[str]) -> int:
    output, args = _take_option(args, "output")
    batch_size, args = _take_option(args, "batch-size")
    text_column, args = _take_option(args, "text-column")
    pair_column, args = _take_option(args, "text-pair-column")
    usage = _paths_or_usage(args, "Usage: lmforge predict CLASSIFIER_DIR INPUT [--output PREDICTIONS.jsonl] "
                            "[--batch-size N] [--text-column text] [--text-pair-column COLUMN]\nINPUT: any file "
                            "lmforge reads (jsonl, json, csv, parquet); each row gets its predicted label(s) (or "
                            "value) and the probabilities by class.")
    if usage is not None:
        return usage
    from lmforge.eval.classify import predict_file
    from lmforge.logs import setup_logging

    setup_logging()
    rows = predict_file(args[0], args[1], output, _batch_size(batch_size, 32), text_column or "text", pair_column)
    _emit([json.dumps(row, ensure_ascii=False) for row in rows], f"Predicted {len(rows):,} rows", output)
    return 0


def cmd_synth(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print(_reference(False, "synth"))
        return 0
    from lmforge.config.parse import load_command_config
    from lmforge.logs import setup_logging
    from lmforge.synth.run import check_endpoint, run_synth

    setup_logging()
    config_path, overrides = _split_config_path(args)
    cfg = load_command_config("synth", config_path, overrides)
    check_endpoint(cfg)
    stats = run_synth(cfg)
    print(f"synth {cfg.synth.synth_task}: kept {stats['kept']:,} now ({stats['kept_total']:,} in "
          f"{cfg.synth.output_dir}), filtered {sum(stats['filtered'].values()):,}, failed requests "
          f"{sum(stats['failed_requests'].values()):,}")
    return 0


MERGE_USAGE = "usage: lmforge merge CONFIG.yaml [key=value ...] (models, merge_method, output_dir; see --help)"


def cmd_merge(args: list[str]) -> int:
    """Fine-tunes of one base (models or LoRA adapters) merged into one model (linear, SLERP, TIES, DARE, ...)."""
    if not args or args[0] in ("-h", "--help"):
        print(MERGE_USAGE if not args else _reference(False, "merge"))
        return 0 if args else 2
    from lmforge.config.parse import load_command_config
    from lmforge.export.model_merging import run_merge
    from lmforge.logs import setup_logging

    setup_logging()
    config_path, overrides = _split_config_path(args)
    cfg = load_command_config("merge", config_path, overrides)
    print(f"Merged to {run_merge(cfg)}")
    return 0


PLAN_USAGE = ("usage: lmforge plan CONFIG.yaml [key=value ...] [--gpus [N x]GPU] [--gpu-memory SIZE] [--tflops T] "
              "[--mfu F] [--json]")


def cmd_plan(args: list[str]) -> int:
    """Will the run fit on these GPUs, and how fast will it go? Traced over fake tensors: no weights, no GPU."""
    if not args or args[0] in ("-h", "--help"):
        print(PLAN_USAGE + "\n  --gpus 8xH100-80GB | 2 | RTX-4090 (default 1 x H100-80GB); --gpu-memory 24GiB for "
              "another device;\n  --tflops its dense bf16 peak; --mfu the share of that peak the estimate assumes "
              "(0.4); --json for tools")
        return 0 if args else 2
    options, rest = _take_options(args, {"--gpus": str, "--gpu-memory": str, "--tflops": float, "--mfu": float},
                                  flags={"--json"})
    from lmforge.config import load_config
    from lmforge.device import planning_for_gpus
    from lmforge.train.plan.command import run_plan
    from lmforge.train.plan.devices import parse_devices
    from lmforge.train.plan.trace import PlanError

    try:
        devices = parse_devices(options.get("--gpus"), options.get("--gpu-memory"), options.get("--tflops"))
    except ValueError as err:
        raise ConfigError(f"Config error: {err}.") from None
    if "--gpus" not in options and "--gpu-memory" not in options:
        print("lmforge plan: no --gpus given: planning for 1 x H100-80GB.", file=sys.stderr)
    config_path, overrides = _split_config_path(rest)
    if devices.count > 1 and not _sets_processes(config_path, overrides):
        # a process per GPU, as `lmforge train` would launch on the machine planned for (before the config is
        # checked: a parallel layout is checked against the number of processes)
        overrides = [*overrides, f"nproc_per_node={devices.count}"]
    with planning_for_gpus():  # the checks of this machine answer for the GPU machine planned for
        cfg = load_config(config_path, overrides)
        try:
            return run_plan(cfg, devices, options.get("--mfu", 0.4), "--json" in options)
        except PlanError as err:
            raise LmforgeError(f"lmforge plan: {err}") from None


def _sets_processes(config_path: str | None, overrides: list[str]) -> bool:
    """Whether the config file or the command line says how many processes the run launches."""
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    if config_path and os.path.isfile(config_path):
        import yaml

        try:
            with open(config_path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh)
        except yaml.YAMLError:
            raw = None  # load_config reports it
        keys |= set(raw) if isinstance(raw, dict) else set()
    return bool(keys & {"nproc_per_node", "nnodes"})


def _take_options(args: list[str], valued: dict[str, type], flags: set[str]) -> tuple[dict[str, Any], list[str]]:
    """(`--name value` / `--name=value` options and flags, the other arguments)."""
    options: dict[str, Any] = {}
    rest: list[str] = []
    items = iter(args)
    for arg in items:
        name, _, inline = arg.partition("=")
        if name in valued:
            value = inline if inline else next(items, None)
            if value is None:
                raise ConfigError(f"Config error: {name} needs a value.")
            try:
                options[name] = valued[name](value)
            except ValueError:
                raise ConfigError(f"Config error: {name} '{value}' is not a {valued[name].__name__}.") from None
        elif arg in flags:
            options[arg] = True
        else:
            rest.append(arg)
    return options, rest


def cmd_bench(args: list[str]) -> int:
    from lmforge.bench import main as bench_main

    return bench_main(args)


def cmd_env(args: list[str]) -> int:
    """Versions and devices; with a MODEL (directory or hub id), also its architecture and what it takes."""
    from lmforge.env_info import environment

    for key, value in environment().items():
        print(f"- {key}: {value}")
    for target in args:
        print(f"- model {target}: {_model_summary(target)}")
    return 0


def _model_summary(target: str) -> str:
    from lmforge.config.model import ModelArguments
    from lmforge.model import multimodal

    model = ModelArguments(model_name_or_path=target)
    config = multimodal.model_config(model)
    if config is None:
        return "no model config found there"
    if not multimodal.is_multimodal_config(config):
        return f"{config.model_type}, takes text"
    try:
        takes = ", ".join(multimodal.modalities(multimodal.load_processor(model)))
    except ConfigError as err:
        takes = f"text (its processor could not be loaded: {err})"
    return f"{config.model_type} (vision-language), takes {takes}"


def cmd_version(args: list[str]) -> int:
    print(__version__)
    return 0


def _reference(markdown: bool, schema: str = "all") -> str:
    from lmforge.config.docs import render_reference

    return render_reference(markdown=markdown, schema=schema)


def cmd_help(args: list[str]) -> int:
    if args and args[0] in ("train", "eval", "serve", "export", "synth", "merge", "config"):
        print(_reference(markdown="--markdown" in args, schema={"config": "all"}.get(args[0], args[0])))
    else:
        print(_usage())
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train,
    "data": cmd_data,
    "eval": cmd_eval,
    "chat": _serving_command("lmforge.serve.chat.run_chat", "lmforge chat CONFIG.yaml|MODEL_DIR [key=value ...]"),
    "api": _serving_command("lmforge.serve.api.run_api", "lmforge api CONFIG.yaml|MODEL_DIR [key=value ...]"),
    "rollout-server": _serving_command("lmforge.serve.rollout_server.run_rollout_server",
                                       "lmforge rollout-server MODEL_DIR [key=value ...]"),
    "webui": _serving_command("lmforge.serve.webui.run_webui", "lmforge webui [CONFIG.yaml|MODEL_DIR] [key=value ...]",
                              need_model=False),
    "webchat": _serving_command("lmforge.serve.webui.run_webchat",
                                "lmforge webchat CONFIG.yaml|MODEL_DIR [key=value ...]"),
    "export": _serving_command("lmforge.export.run.run_export",
                               "lmforge export CONFIG.yaml|MODEL_DIR [key=value ...] (export_dir=OUT required)",
                               schema="export"),
    "score": cmd_score,
    "predict": cmd_predict,
    "synth": cmd_synth,
    "merge": cmd_merge,
    "bench": cmd_bench,
    "plan": cmd_plan,
    "env": cmd_env,
    "version": cmd_version,
    "help": cmd_help,
}


def _drop_local_rank(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher (and torch's old launch module) pass `--local_rank=N` before the subcommand; the
    LOCAL_RANK environment variable they also set carries the same information."""
    kept: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg.startswith(("--local_rank=", "--local-rank=")):
            continue
        elif arg in ("--local_rank", "--local-rank"):
            skip_next = True
        else:
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    argv = _drop_local_rank(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        return cmd_version([])
    from lmforge.logs import quiet_import_notices

    quiet_import_notices()  # before a command imports the libraries that log them
    command = COMMANDS.get(argv[0])
    if command is None:
        from lmforge.config.suggest import suggest

        print(f"lmforge: unknown command '{argv[0]}'.{suggest(argv[0], COMMANDS)} Run `lmforge help`.",
              file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except LmforgeError as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("lmforge: interrupted.", file=sys.stderr)
        return 130
    except Exception as err:  # a full disk anywhere (a log line, the lock file) is one readable line, not a traceback
        from lmforge.errors import disk_full_message, is_disk_full

        if not is_disk_full(err):
            raise
        print(disk_full_message(getattr(err, "filename", None) or os.getcwd()), file=sys.stderr)
        return 2
