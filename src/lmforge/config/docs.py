"""The config reference (terminal and Markdown), generated from the dataclasses: never edited by hand."""

from __future__ import annotations

import enum
from typing import Any

from lmforge.config.coerce import type_name
from lmforge.config.schema import SCHEMAS, key_index

TITLES = {
    "model": "Model and tokenizer",
    "data": "Data",
    "finetuning": "Stage",
    "generation": "Generation (samples at the end of training; ppo/grpo rollouts)",
    "rl": "Online RL (ppo, grpo): rewards, rollouts, policy updates",
    "tracking": "Experiment tracking",
    "resilience": "Numerical guard (NaN/inf steps)",
    "launch": "Processes and machines (`lmforge train` launches itself under torchrun)",
    "parallelism": "Model parallelism (tensor, context, sequence; FSDP2 sharding): how one model copy is split over "
    "processes",
    "eval": "Evaluation (`lmforge eval`; the model, data and generation keys above apply too, except where noted)",
    "serve": "Serving (`lmforge chat`, `api`, `webui`, `webchat`; the model, data (`template`) and generation keys "
    "apply too: generation keys are the defaults a request does not set)",
    "export": "Export (`lmforge export`; the model and data (`template`) keys apply too)",
    "merge": "Model merging (`lmforge merge`)",
    "synth": "Data synthesis (`lmforge synth`; the data keys apply too: `dataset`, `dataset_dir`, `max_samples`, "
    "`text_column`)",
    "training": "Trainer (every `transformers.TrainingArguments` field, passed through; `bf16`/`fp16` also take "
    "`auto`: on where the GPU supports it)",
}


# Groups owned by another library: the Markdown reference points to its docs instead of copying them; the terminal
# reference (`lmforge help train`) lists the installed version's fields with their help.
UPSTREAM_GROUPS = {
    "training": "Every field of [`transformers.TrainingArguments`]"
    "(https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments) of the "
    "installed transformers release is a key (`learning_rate`, `num_train_epochs`, `per_device_train_batch_size`, "
    "`gradient_accumulation_steps`, `save_steps`, `report_to`, ...), with transformers' own defaults and help; "
    "`lmforge help train` lists them as installed. lmforge adds: `bf16`/`fp16` take `auto` (on where the GPU "
    "supports it), `resume_from_checkpoint: true` takes the newest complete checkpoint in `output_dir`, `fsdp: "
    "true` is accepted.",
}


def _default(value) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or value == [] or value == {}:
        return "unset" if value is None else repr(value)
    return f"{value!r}" if isinstance(value, str) else str(value)


def _type(key) -> str:
    """The type shown for a key: its registry's values where it has one (`stage`), else its Python type."""
    return "one of " + ", ".join(repr(c) for c in key.choices) if key.choices else type_name(key.type)


def _described(key) -> str:
    """A key's help, with the stages it applies to (its `stages=`, the source validation reads too)."""
    text = _help(key.help)
    return f"{text} [stages: {', '.join(key.stages)}]" if key.stages else text


def _help(text: str) -> str:
    return " ".join(text.split())


def render_reference(markdown: bool = False, schema: str = "all") -> str:
    """Every key of one command's schema (`train`, `eval`, `serve`, `export`), or of all of them (`"all"`)."""
    schemas = list(SCHEMAS) if schema == "all" else [schema]
    by_group: dict[str, dict[str, Any]] = {}  # a name two commands share (`output_dir`) is listed in each group
    for s in schemas:
        for name, key in key_index(s).items():
            by_group.setdefault(key.group, {})[name] = key
    groups = list(dict.fromkeys(group for s in schemas for group in SCHEMAS[s]))
    lines = []
    if markdown:
        lines += ["# Config reference", "",
                  "Generated from lmforge's config dataclasses by `lmforge help config --markdown`; do not edit.",
                  "Every key can be set in the run's YAML file or on the command line as `key=value` (command line "
                  "wins). Mapping keys take `key.sub=value` too.", ""]
    for group in groups:
        keys = list(by_group.get(group, {}).values())
        if markdown and group in UPSTREAM_GROUPS:
            # upstream's fields, help and defaults change with its releases: a stored reference would go stale
            lines += [f"## {TITLES[group]}", "", UPSTREAM_GROUPS[group], ""]
            continue
        if markdown:
            lines += [f"## {TITLES[group]}", "", "| key | type | default | description |", "|---|---|---|---|"]
            for k in keys:
                desc = _described(k).replace("|", "\\|")
                lines.append(f"| `{k.name}` | {_type(k).replace('|', '/')} | `{_default(k.default)}` | "
                             f"{desc} |")
            lines.append("")
        else:
            lines += [f"{TITLES[group]}:"]
            for k in keys:
                lines.append(f"  {k.name} ({_type(k)}, default {_default(k.default)})")
                if k.help:
                    lines.append(f"      {_described(k)}")
            lines.append("")
    return "\n".join(lines)
