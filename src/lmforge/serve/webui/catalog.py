"""What the web UI's pickers offer, read from what exists: the datasets of a `dataset_info.json` (with their format
and row counts) and the data files beside it, the models saved by runs, the chat templates, and the defaults a chosen
model implies. Only files are read here (configs, headers, line counts): nothing loads a model or imports torch."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lmforge.data.chat_templates import BUILTIN_TEMPLATES
from lmforge.data.registry import FILE_BUILDERS, REGISTRY_FILE, builtin_dataset_dir

ROW_COUNT_LIMIT = 256 * 1024 * 1024  # a JSON array file larger than this is not parsed to count its rows


@dataclass(frozen=True)
class DatasetChoice:
    name: str  # what goes into `dataset`
    format: str  # alpaca, sharegpt, "... preference", kto, text, or the file type
    rows: int | None  # None: not counted (a hub dataset, a file too large to parse)
    where: str  # the registry or folder it was found in
    hub: str = ""  # the hub id of a dataset loaded from a hub


def entry_format(entry: dict[str, Any]) -> str:
    """The layout a dataset_info.json entry declares, in LLaMA-Factory's terms."""
    columns = entry.get("columns") or {}
    if "kto_tag" in columns:
        return "kto"
    if entry.get("ranking"):
        return f"{entry.get('formatting', 'alpaca')} preference"
    if set(columns) <= {"prompt", "text"} and columns:
        return "text"
    return entry.get("formatting", "alpaca")


def _count_file(path: str) -> int | None:
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".txt", ".text"):
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    if ext == ".csv":
        with open(path, "rb") as fh:
            return max(sum(1 for line in fh if line.strip()) - 1, 0)
    if ext == ".json":
        if os.path.getsize(path) > ROW_COUNT_LIMIT:
            return None
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return len(data) if isinstance(data, list) else None
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None


@lru_cache(maxsize=512)
def _rows(path: str, mtime: float, size: int) -> int | None:  # keyed by mtime and size: a changed file is recounted
    try:
        if os.path.isdir(path):
            files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
                     if os.path.splitext(f)[1].lower() in FILE_BUILDERS]
            counts = [_count_file(f) for f in sorted(files)]
            return None if not counts or None in counts else sum(counts)
        return _count_file(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def row_count(path: str) -> int | None:
    """Rows in a data file or folder of files (None when it cannot be counted cheaply)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _rows(os.path.realpath(path), stat.st_mtime, stat.st_size)


def _registry(folder: str) -> dict[str, dict[str, Any]]:
    """The well-formed entries of a folder's dataset_info.json (none when it is missing or unreadable: the config
    check reports a broken registry when a run names it)."""
    registry = _read_json(os.path.join(folder, REGISTRY_FILE))
    return {name: entry for name, entry in registry.items() if isinstance(entry, dict)}


def _registry_choices(folder: str, registry: dict[str, dict[str, Any]]) -> list[DatasetChoice]:
    path = os.path.join(folder, REGISTRY_FILE)
    choices = []
    for name, entry in registry.items():
        rows = None
        if entry.get("file_name") and not entry.get("hf_hub_url"):
            rows = row_count(os.path.join(folder, str(entry["file_name"])))
        if rows is not None and entry.get("num_samples"):
            rows = min(rows, int(entry["num_samples"]))
        choices.append(DatasetChoice(name, entry_format(entry), rows, path,
                                     str(entry.get("hf_hub_url") or entry.get("ms_hub_url") or "")))
    return choices


def dataset_choices(dataset_dir: str) -> list[DatasetChoice]:
    """The entries of `dataset_dir/dataset_info.json`, then the data files in `dataset_dir` that no entry names,
    then lmforge's built-in datasets."""
    registry = _registry(dataset_dir) if dataset_dir else {}
    choices = _registry_choices(dataset_dir, registry)
    named = {str(entry.get("file_name")) for entry in registry.values()}
    if dataset_dir and os.path.isdir(dataset_dir):
        for name in sorted(os.listdir(dataset_dir)):
            ext = os.path.splitext(name)[1].lower()
            if ext in FILE_BUILDERS and name not in named and name != REGISTRY_FILE:
                path = os.path.join(dataset_dir, name)
                choices.append(DatasetChoice(path, f"{FILE_BUILDERS[ext]} file", row_count(path), dataset_dir))
    taken = {c.name for c in choices}
    builtin = builtin_dataset_dir()
    choices += [c for c in _registry_choices(builtin, _registry(builtin)) if c.name not in taken]
    return choices


def template_choices() -> list[str]:
    """The built-in chat templates (the form's empty value means the tokenizer's own)."""
    return list(BUILTIN_TEMPLATES)


# ---- models -----------------------------------------------------------------------------------------------------

def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class ModelInfo:
    """What the files of a local model or adapter directory say (nothing is loaded)."""

    path: str
    kind: str  # "model", "adapter" or "" (not a local model directory)
    architecture: str = ""
    model_type: str = ""
    base: str = ""  # an adapter's base model
    has_chat_template: bool = False
    linear_modules: tuple[str, ...] = ()  # the layers' linear modules LoRA `all` reaches (from the weight names)
    layers: int | None = None
    hidden_size: int | None = None

    def targets(self) -> dict[str, Any]:
        """The keys that load it: a model as `model_name_or_path`; an adapter on top of its base."""
        if self.kind == "adapter":
            return {"model_name_or_path": self.base, "adapter_name_or_path": self.path}
        return {"model_name_or_path": self.path}


def _weight_names(folder: str) -> list[str]:
    """Tensor names from the safetensors index or headers (8-byte length, then JSON), never the tensors."""
    index = _read_json(os.path.join(folder, "model.safetensors.index.json"))
    if index.get("weight_map"):
        return list(index["weight_map"])
    names: list[str] = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            try:
                with open(os.path.join(folder, name), "rb") as fh:
                    (length,) = struct.unpack("<Q", fh.read(8))
                    names += [k for k in json.loads(fh.read(length)) if k != "__metadata__"]
            except (OSError, ValueError, struct.error):
                continue
    return names


def linear_module_names(weight_names: list[str]) -> tuple[str, ...]:
    """The distinct module names inside the transformer layers that hold 2-D `.weight`s (q_proj, down_proj, ...):
    norms have 1-D weights, so a module followed by `.weight` and owned by a numbered layer is taken; norms are told
    apart by name."""
    found = []
    for name in weight_names:
        parts = name.split(".")
        if len(parts) < 3 or parts[-1] != "weight" or not any(p.isdigit() for p in parts[:-2]):
            continue
        module = parts[-2]
        if "norm" in module or module.isdigit() or module in found:
            continue
        found.append(module)
    return tuple(found)


def model_info(path: str) -> ModelInfo:
    path = path.strip()
    if not path or not os.path.isdir(path):
        return ModelInfo(path, "")
    tokenizer_config = _read_json(os.path.join(path, "tokenizer_config.json"))
    has_template = bool(tokenizer_config.get("chat_template")) or any(
        os.path.isfile(os.path.join(path, f)) for f in ("chat_template.jinja", "chat_template.json"))
    adapter = _read_json(os.path.join(path, "adapter_config.json"))
    if adapter:
        base = str(adapter.get("base_model_name_or_path") or "")
        # the base's files (not when an adapter names itself or another adapter: no loop through bad configs)
        own = os.path.isdir(base) and not os.path.isfile(os.path.join(base, "adapter_config.json"))
        base_info = model_info(base) if own else ModelInfo(base, "")
        return ModelInfo(path, "adapter", base_info.architecture, base_info.model_type, base,
                         has_template or base_info.has_chat_template, base_info.linear_modules, base_info.layers,
                         base_info.hidden_size)
    config = _read_json(os.path.join(path, "config.json"))
    if not config:
        return ModelInfo(path, "")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    return ModelInfo(path, "model", ", ".join(config.get("architectures") or []), str(config.get("model_type", "")),
                     "", has_template, linear_module_names(_weight_names(path)), text.get("num_hidden_layers"),
                     text.get("hidden_size"))


def model_defaults(path: str) -> dict[str, Any]:
    """The form values a chosen model implies: how it is loaded (an adapter on its base), the template (empty: the
    tokenizer's own, when it has one; `chatml` otherwise) and the LoRA targets (every linear layer)."""
    info = model_info(path)
    if not info.kind:
        return {}
    return {**info.targets(), "template": "" if info.has_chat_template else "chatml", "lora_target": "all"}
