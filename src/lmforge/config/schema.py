"""The full set of config keys: lmforge's groups plus every `transformers.TrainingArguments` field (read from
`trainer_fields`, so that listing and checking keys does not import transformers)."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmforge.config.data import DataArguments
from lmforge.config.evaluation import EvalArguments
from lmforge.config.exporting import ExportArguments
from lmforge.config.finetuning import FinetuningArguments
from lmforge.config.generation import GenerationArguments
from lmforge.config.launch import LaunchArguments
from lmforge.config.merging import MergeArguments
from lmforge.config.model import ModelArguments
from lmforge.config.parallelism import ParallelismArguments
from lmforge.config.resilience import ResilienceArguments
from lmforge.config.rl import RLArguments
from lmforge.config.serving import ServeArguments
from lmforge.config.synth import SynthArguments
from lmforge.config.tracking import TrackingArguments
from lmforge.config.trainer_fields import training_fields

if TYPE_CHECKING:
    from transformers import TrainingArguments

# Group name -> dataclass. Order is the order of `lmforge help train` and docs/config.md.
GROUPS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "finetuning": FinetuningArguments,
    "generation": GenerationArguments,
    "rl": RLArguments,
    "tracking": TrackingArguments,
    "resilience": ResilienceArguments,
    "launch": LaunchArguments,
    "parallelism": ParallelismArguments,
    "training": training_fields(),  # the run builds the real TrainingArguments from these values
}

# The keys of `lmforge eval`: the model to load, the data of perplexity/generation tasks, decoding, the task itself.
EVAL_GROUPS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "generation": GenerationArguments,
    "eval": EvalArguments,
}

# `lmforge chat/api/webui/webchat`: the model, its template, decoding defaults, the server.
SERVE_GROUPS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "generation": GenerationArguments,
    "serve": ServeArguments,
}

# `lmforge export`: the model (+ adapter), its template, where and how to write it.
EXPORT_GROUPS: dict[str, type] = {"model": ModelArguments, "data": DataArguments, "export": ExportArguments}

# `lmforge merge`: the models, the method and where the merge is written.
MERGE_GROUPS: dict[str, type] = {"merge": MergeArguments}

# `lmforge synth`: the data to start from and the teacher endpoint.
SYNTH_GROUPS: dict[str, type] = {"data": DataArguments, "synth": SynthArguments}

SCHEMAS: dict[str, dict[str, type]] = {
    "train": GROUPS, "eval": EVAL_GROUPS, "serve": SERVE_GROUPS, "export": EXPORT_GROUPS, "synth": SYNTH_GROUPS,
    "merge": MERGE_GROUPS}

# Where lmforge's default differs from transformers', and why.
TRAINING_DEFAULTS: dict[str, Any] = {
    "logging_steps": 10,  # transformers logs every 500 steps: too rare to watch a small run
    "include_num_input_tokens_seen": "all",  # feeds tokens/s in trainer_log.jsonl
}


# Evaluation decodes greedily unless told otherwise: scores should not depend on the seed.
EVAL_DEFAULTS: dict[str, Any] = {"do_sample": False}
# A chat reply or API completion is longer than a training-time sample; requests set their own `max_tokens`.
SERVE_DEFAULTS: dict[str, Any] = {"max_new_tokens": 512}
DEFAULTS: dict[str, dict[str, Any]] = {
    "train": TRAINING_DEFAULTS, "eval": EVAL_DEFAULTS, "serve": SERVE_DEFAULTS, "export": {}, "synth": {},
    "merge": {}}


RUN_CONFIG_FILE = "lmforge_config.yaml"  # a run's config as it was given, saved in its output_dir

@dataclass
class RunConfig:
    """One run, fully resolved: every group's arguments plus where the config came from."""

    model: ModelArguments
    data: DataArguments
    finetuning: FinetuningArguments
    generation: GenerationArguments
    rl: RLArguments
    tracking: TrackingArguments
    resilience: ResilienceArguments
    launch: LaunchArguments
    parallelism: ParallelismArguments
    training: TrainingArguments
    source: str = "<command line>"
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class EvalConfig:
    """One `lmforge eval` run, fully resolved."""

    model: ModelArguments
    data: DataArguments
    generation: GenerationArguments
    eval: EvalArguments
    source: str = "<command line>"
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class ServeConfig:
    """One `lmforge chat/api/webui/webchat` session, fully resolved."""

    model: ModelArguments
    data: DataArguments
    generation: GenerationArguments
    serve: ServeArguments
    source: str = "<command line>"
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class ExportConfig:
    """One `lmforge export`, fully resolved."""

    model: ModelArguments
    data: DataArguments
    export: ExportArguments
    source: str = "<command line>"
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class SynthConfig:
    """One `lmforge synth` run, fully resolved."""

    data: DataArguments
    synth: SynthArguments
    source: str = "<command line>"
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class MergeConfig:
    """One `lmforge merge`, fully resolved."""

    merge: MergeArguments
    source: str = "<command line>"
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


COMMAND_CONFIGS: dict[str, type] = {"eval": EvalConfig, "serve": ServeConfig, "export": ExportConfig,
                                    "synth": SynthConfig, "merge": MergeConfig}


def group_fields(cls: type) -> list[dataclasses.Field]:
    """The init fields of a group (private or non-init fields of TrainingArguments are not config keys)."""
    return [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]


@dataclass(frozen=True)
class Key:
    """One config key: its group, dataclass field and resolved type."""

    group: str
    field: dataclasses.Field
    type: Any
    schema: str = "train"

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def help(self) -> str:
        text = self.field.metadata.get("help", "")
        return text() if callable(text) else text

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The allowed values of a key whose choices come from a registry (e.g. `stage`), else None."""
        choices = self.field.metadata.get("lmforge_choices")
        return tuple(choices()) if choices else None

    @property
    def stages(self) -> tuple[str, ...] | None:
        """The stages this key applies to (None: every stage)."""
        return self.field.metadata.get("stages")

    @property
    def default(self) -> Any:
        return field_default(self.group, self.field, self.schema)


@functools.cache
def key_index(schema: str = "train") -> dict[str, Key]:
    """Every config key of a command schema (`train`, `eval`, `serve`, `export`) -> Key; unique across groups."""
    index: dict[str, Key] = {}
    for group, cls in SCHEMAS[schema].items():
        hints = typing.get_type_hints(cls)  # resolves `from __future__ import annotations` strings
        for f in group_fields(cls):
            if f.name in index:
                raise RuntimeError(f"config key {f.name!r} is defined in both {index[f.name].group} and {group}")
            index[f.name] = Key(group, f, hints.get(f.name, f.type), schema)
    return index


def field_default(group: str, f: dataclasses.Field, schema: str = "train") -> Any:
    if f.name in DEFAULTS[schema]:  # key names are unique within a schema
        return DEFAULTS[schema][f.name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None
