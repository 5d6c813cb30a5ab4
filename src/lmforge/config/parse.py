"""Read a run's YAML plus `key=value` overrides into a validated RunConfig."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import yaml

from lmforge.config.coerce import coerce
from lmforge.config.hub import resolve_hubs
from lmforge.config.schema import COMMAND_CONFIGS, DEFAULTS, GROUPS, SCHEMAS, EvalConfig, RunConfig, key_index
from lmforge.config.secrets import drop_masked, environment_secrets
from lmforge.config.suggest import suggest
from lmforge.config.validate import VALIDATORS, check_engine_configs, validate
from lmforge.device import accelerator_available, auto_precision, planning
from lmforge.errors import ConfigError

if TYPE_CHECKING:
    from transformers import TrainingArguments

logger = logging.getLogger(__name__)


def read_yaml(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"Config error: config file '{path}' does not exist.")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"Config error: '{path}' is not valid YAML{where}: {problem}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config error: '{path}' must hold a mapping of key: value, not a {type(data).__name__}.")
    return data


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`key=value`, `--key=value` or `--key value`; values are read as YAML scalars/lists (`[a, b]`, `true`, `3e-4`).

    A dotted key sets one entry of a mapping key: `config_overrides.hidden_size=64`.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            arg = arg[2:]
            if "=" not in arg:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise ConfigError(f"Config error (command line): '--{arg}' needs a value, e.g. --{arg}=VALUE.")
                arg = f"{arg}={args[i + 1]}"
                i += 1
        if "=" not in arg:
            raise ConfigError(f"Config error (command line): '{arg}' is not a key=value override.")
        key, text = arg.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        if "." in key:
            top, sub = key.split(".", 1)
            out.setdefault(top, {})
            if not isinstance(out[top], dict):
                raise ConfigError(f"Config error (command line): '{top}' is set both as a value and as a mapping.")
            out[top][sub] = value
        else:
            out[key] = value
        i += 1
    return out


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def typed_values(raw: dict[str, Any], schema: str, source: str, cli_keys: set[str]) -> dict[str, dict[str, Any]]:
    """Group -> {key: value checked and converted to the key's type}, for the keys of one command's schema."""
    index = key_index(schema)
    values: dict[str, dict[str, Any]] = {group: {} for group in SCHEMAS[schema]}
    for key, value in raw.items():
        where = "command line" if key in cli_keys else source
        if not isinstance(key, str) or key not in index:
            raise ConfigError(
                f"Config error ({where}): unknown key '{key}'.{suggest(str(key), index.keys())} "
                f"Run `lmforge help {schema}` to list every key."
            )
        spec = index[key]
        if key == "resume_from_checkpoint" and isinstance(value, bool):
            value = "true" if value else None  # `true` means: the newest checkpoint in output_dir
        if key in ("bf16", "fp16") and isinstance(value, str) and value.lower() == "auto":
            value = auto_precision(key)  # mixed precision where the hardware has it
        if key == "fsdp" and isinstance(value, bool):
            values[spec.group][key] = value or None  # `fsdp: true` (the string form is deprecated in transformers)
            continue
        values[spec.group][key] = coerce(key, value, spec.type, where)
        allowed = spec.choices
        if allowed is not None and values[spec.group][key] not in allowed:
            raise ConfigError(f"Config error ({where}): '{key}' must be one of {', '.join(allowed)}, got "
                              f"{value!r}.{suggest(str(value), allowed)}")
    for key, default in DEFAULTS[schema].items():
        values[index[key].group].setdefault(key, default)
    return values


def build_config(raw: dict[str, Any], source: str = "<command line>", cli_keys: set[str] | None = None,
                 trainer: bool = True) -> RunConfig:
    """Check every key and value of `raw` and build the RunConfig (exits 2 via ConfigError on any problem).

    The checks read the TrainingArguments values from `trainer_fields` (no transformers import): a config error comes
    before torch loads. With `trainer` (a run), `cfg.training` is then the real TrainingArguments; without it (`lmforge
    data`, which trains nothing), it stays the plain values."""
    values = typed_values(raw, "train", source, cli_keys or set())
    if values["training"].get("bf16") and values["training"].get("fp16"):
        raise ConfigError(f"Config error ({source}): 'bf16' and 'fp16' exclude each other: choose one precision.")
    optim = str(values["training"].get("optim", ""))
    if optim.startswith(("galore_", "apollo_")):
        # GaLore/APOLLO project the gradients of the weight matrices they are given: every linear layer by default
        values["training"].setdefault("optim_target_modules", "all-linear")
    if values["finetuning"].get("finetuning_type") == "lora":
        # every adapter takes part in every forward: DDP's search for unused parameters is a wasted graph traversal
        values["training"].setdefault("ddp_find_unused_parameters", False)
    if values["parallelism"].get("context_parallel_size", 1) > 1 and accelerator_available():
        # accelerate runs torch's context parallelism inside FSDP2 (its mesh joins the shard and context dimensions)
        values["training"].setdefault("fsdp", True)
        values["training"].setdefault("fsdp_config", {"fsdp_version": 2})
    check_engine_configs(values["training"], source)
    if not values["training"].get("output_dir"):
        raise ConfigError(f"Config error ({source}): 'output_dir' is required (where the model and logs are saved).")
    groups = {group: cls(**values[group]) for group, cls in GROUPS.items()}
    cfg = RunConfig(**groups, source=source, raw=dict(raw))
    with blamed_on_the_command_line(source, set(raw), cli_keys or set()):
        resolve_hubs(cfg, cfg.model.hub, cfg.model.hf_endpoint)
        validate(cfg)
    if trainer:
        cfg.training = trainer_arguments(values["training"], source)
    return cfg


def trainer_arguments(values: dict[str, Any], source: str) -> TrainingArguments:
    """transformers' TrainingArguments from checked values (its own checks of combinations become config errors)."""
    from transformers import TrainingArguments

    values = dict(values)
    if "use_cpu" not in values and not accelerator_available():
        # accelerate only forms a multi-process CPU group (torchrun + gloo) when told the run is on the CPU
        values["use_cpu"] = True
    if values.get("fsdp") and values.get("use_cpu"):
        logger.warning("fsdp needs GPUs: on the CPU the Trainer runs plain DDP (gloo) instead.")
    # a plan made on a machine without the GPUs (or DeepSpeed) the run is for: TrainingArguments would check bf16
    # against this machine and load the DeepSpeed config through the package, so it is built as for the CPU and the
    # two settings are put back on the built arguments (the planner reads them; nothing runs on this machine)
    deepspeed = values.pop("deepspeed", None) if planning() else None
    use_cpu = values.get("use_cpu", False)
    if planning():
        values["use_cpu"] = True
    try:
        args = TrainingArguments(**values)
    except (ValueError, TypeError) as err:  # transformers validates combinations in __post_init__
        raise ConfigError(f"Config error ({source}): invalid training settings: {err}") from None
    if planning():
        args.deepspeed, args.use_cpu = deepspeed, use_cpu
    return args


@contextlib.contextmanager
def blamed_on_the_command_line(source: str, keys: set[str], cli_keys: set[str]) -> Iterator[None]:
    """A check's error names the config file; where the keys it quotes ('key' or 'key: value') were given on the
    command line (an override of the file), it names the command line, or both where it quotes keys of each."""
    try:
        yield
    except ConfigError as err:
        prefix, text = f"Config error ({source}): ", str(err)
        if not cli_keys or not text.startswith(prefix):
            raise
        quoted = {name.split(":")[0].strip() for name in re.findall(r"'([A-Za-z_][\w.]*(?:: [^']*)?)'", text)}
        from_cli, from_file = quoted & cli_keys, quoted & (keys - cli_keys)
        if not from_cli:
            raise
        where = f"{source} and the command line" if from_file else "command line"
        raise ConfigError(f"Config error ({where}): {text[len(prefix):]}") from None


def with_secrets(raw: dict[str, Any]) -> dict[str, Any]:
    """Masked secrets (`***`) dropped, then the ones from $LMFORGE_SECRETS set (where the config has none)."""
    return {**environment_secrets(), **drop_masked(raw)}


def load_config(path: str | None, overrides: list[str] | None = None, trainer: bool = True) -> RunConfig:
    """YAML file (optional) + command-line overrides (which win) -> validated RunConfig (`trainer`: see
    `build_config`)."""
    base = read_yaml(path) if path else {}
    cli = parse_overrides(overrides or [])
    return build_config(with_secrets(merge(base, cli)), source=path or "<command line>", cli_keys=set(cli),
                        trainer=trainer)


def load_command_config(schema: str, path: str | None, overrides: list[str] | None = None, **checks: Any):
    """`lmforge eval/chat/api/webui/export`: YAML file (optional) + command-line overrides -> the command's
    validated config (EvalConfig, ServeConfig or ExportConfig); `checks` go to the schema's validator."""
    base = read_yaml(path) if path else {}
    cli = parse_overrides(overrides or [])
    source = path or "<command line>"
    raw = with_secrets(merge(base, cli))
    values = typed_values(raw, schema, source, set(cli))
    cfg = COMMAND_CONFIGS[schema](**{group: cls(**values[group]) for group, cls in SCHEMAS[schema].items()},
                                  source=source, raw=raw)
    with blamed_on_the_command_line(source, set(raw), set(cli)):
        model = getattr(cfg, "model", None)
        if model is not None:
            resolve_hubs(cfg, model.hub, model.hf_endpoint)
        VALIDATORS[schema](cfg, **checks)
    return cfg


def load_target_config(schema: str, target: str | None, overrides: list[str], **checks: Any):
    """`lmforge chat/api/export/bench --serve TARGET [key=value ...]`: TARGET is a YAML config, a model directory
    (or hub id) or a LoRA adapter directory (`model_target_overrides`)."""
    if target is None or target.endswith((".yaml", ".yml")):
        return load_command_config(schema, target, overrides, **checks)
    return load_command_config(schema, None, model_target_overrides(target) + overrides, **checks)


def load_eval_config(path: str | None, overrides: list[str] | None = None) -> EvalConfig:
    return load_command_config("eval", path, overrides)


def model_target_overrides(target: str) -> list[str]:
    """`lmforge chat/api/export TARGET`: TARGET is a config file, a model directory (or hub id), or a LoRA adapter
    directory, whose base model is read from its adapter_config.json. Returns the overrides TARGET stands for
    (none for a config file); keys given after it on the command line still win."""
    if target.endswith((".yaml", ".yml")) or os.path.isfile(target):
        return []
    adapter_config = os.path.join(target, "adapter_config.json")
    if os.path.isfile(adapter_config):
        from lmforge.jsonl import read_json_mapping

        base = read_json_mapping(adapter_config, "adapter config").get("base_model_name_or_path")
        if not base:
            raise ConfigError(f"Config error: '{adapter_config}' names no base model: set model_name_or_path.")
        return [f"model_name_or_path={base}", f"adapter_name_or_path={target}"]
    return [f"model_name_or_path={target}"]
