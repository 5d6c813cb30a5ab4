"""Resolve the names in `dataset` to concrete sources, reading LLaMA-Factory `dataset_info.json` registries."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from lmforge.config.suggest import suggest
from lmforge.errors import DataError
from lmforge.jsonl import read_json_mapping

REGISTRY_FILE = "dataset_info.json"
FILE_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv",
                 ".parquet": "parquet", ".arrow": "arrow"}


@dataclass
class SourceSpec:
    """One data source, fully resolved: what to load, from where, and which column holds the text."""

    name: str
    kind: Literal["file", "disk", "hub", "modelscope"]
    path: str
    text_column: str = "text"
    split: str = "train"
    subset: str | None = None
    num_samples: int | None = None
    files: tuple[str, ...] = ()  # for kind == "file": every data file (one for a file, several for a folder)
    entry: dict[str, Any] = field(default_factory=dict)  # the dataset_info.json entry (formatting, columns, tags)

    @property
    def builder(self) -> str | None:
        return FILE_BUILDERS.get(os.path.splitext(self.files[0])[1].lower()) if self.files else None


def builtin_dataset_dir() -> str:
    """The registry of datasets that ship inside lmforge (the quickstart corpus)."""
    return str(resources.files("lmforge") / "resources")


def read_registry(dataset_dir: str) -> dict[str, Any]:
    return read_json_mapping(os.path.join(dataset_dir, REGISTRY_FILE), "dataset names to entries")


def _is_saved_dataset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(os.path.join(path, "state.json"))


def _files_in_folder(folder: str, name: str) -> tuple[str, ...]:
    files = sorted(
        os.path.join(root, f)
        for root, _, fs in os.walk(folder)
        for f in fs
        if os.path.splitext(f)[1].lower() in FILE_BUILDERS
    )
    if not files:
        raise DataError(f"Data error: source '{name}': folder '{folder}' holds no data files "
                        f"({', '.join(sorted(FILE_BUILDERS))}).")
    for path in files:
        _check_reachable(path, name)
    kinds = {FILE_BUILDERS[os.path.splitext(f)[1].lower()] for f in files}
    if len(kinds) > 1:
        raise DataError(f"Data error: source '{name}': folder '{folder}' mixes file types "
                        f"({', '.join(sorted(kinds))}); name the files separately.")
    return tuple(files)


def _check_reachable(path: str, name: str) -> None:
    """A file a folder lists that cannot be followed (a symbolic link loop, a dangling link) is a DataError naming it,
    not an OSError deep in the loader."""
    try:
        os.stat(path)
    except OSError as err:
        raise DataError(f"Data error: source '{name}': '{path}' cannot be read: {err.strerror or err}.") from None


def spec_for_path(name: str, path: str, text_column: str, **extra: Any) -> SourceSpec:
    """A local file, a folder of files, or a `save_to_disk` directory."""
    if os.path.isdir(path):
        if _is_saved_dataset(path):
            return SourceSpec(name, "disk", path, text_column, **extra)
        return SourceSpec(name, "file", path, text_column, files=_files_in_folder(path, name), **extra)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FILE_BUILDERS:
        raise DataError(f"Data error: source '{name}': '{path}' has an unsupported extension '{ext}' "
                        f"(supported: {', '.join(sorted(FILE_BUILDERS))}).")
    return SourceSpec(name, "file", path, text_column, files=(path,), **extra)


def _inside(path: str, folder: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _spec_from_entry(name: str, entry: Any, dataset_dir: str, text_column: str,
                     allow_absolute: bool = False) -> SourceSpec:
    where = os.path.join(dataset_dir, REGISTRY_FILE)
    if not isinstance(entry, dict):
        raise DataError(f"Data error: '{where}': entry '{name}' must be a mapping, not {type(entry).__name__}.")
    columns = entry.get("columns") or {}
    # LLaMA-Factory names the pretraining text column `prompt`; an explicit `text` column mapping also counts.
    column = columns.get("prompt") or columns.get("text") or text_column
    extra = {"split": entry.get("split", "train"), "subset": entry.get("subset"),
             "num_samples": entry.get("num_samples"), "entry": entry}
    if entry.get("ms_hub_url") and os.environ.get("USE_MODELSCOPE_HUB", "").lower() in ("1", "true", "yes"):
        return SourceSpec(name, "modelscope", entry["ms_hub_url"], column, **extra)  # hub: modelscope
    if entry.get("hf_hub_url"):
        return SourceSpec(name, "hub", entry["hf_hub_url"], column, **extra)
    if entry.get("file_name"):
        file_name = str(entry["file_name"])
        path = os.path.join(dataset_dir, file_name)
        if not _inside(path, dataset_dir) and not (allow_absolute and os.path.isabs(file_name)):
            raise DataError(f"Data error: '{where}': entry '{name}' names file_name '{file_name}', which resolves to "
                            f"'{os.path.realpath(path)}', outside dataset_dir '{dataset_dir}'. A registry may name "
                            f"files inside its folder only; for an absolute path you trust, set "
                            f"`allow_absolute_file_name: true`.")
        if not os.path.exists(path):
            raise DataError(f"Data error: '{where}': entry '{name}' names file_name '{entry['file_name']}', but "
                            f"'{path}' does not exist.")
        return spec_for_path(name, path, column, **extra)
    if entry.get("ms_hub_url"):
        raise DataError(f"Data error: '{where}': entry '{name}' only has ms_hub_url: set `hub: modelscope` (or "
                        "$USE_MODELSCOPE_HUB=1) to load it from ModelScope, or give it a file_name or hf_hub_url.")
    unsupported = [k for k in ("om_hub_url", "script_url", "cloud_file_name") if entry.get(k)]
    if unsupported:
        raise DataError(f"Data error: '{where}': entry '{name}' only has {unsupported[0]}, which lmforge does not "
                        "load; give it a file_name or hf_hub_url.")
    raise DataError(f"Data error: '{where}': entry '{name}' has neither 'file_name' nor 'hf_hub_url'.")


def resolve_sources(dataset: str, dataset_dir: str, text_column: str = "text",
                    allow_absolute: bool = False) -> list[SourceSpec]:
    """`dataset` (comma-separated) -> one SourceSpec per name, looked up in this order: the registry in
    `dataset_dir`, lmforge's built-in registry, a local path, and finally a hub dataset id. `allow_absolute`: the
    registry may name absolute file paths outside `dataset_dir`."""
    names = [n.strip() for n in dataset.split(",") if n.strip()]
    user_registry = read_registry(dataset_dir)
    builtin_dir = builtin_dataset_dir()
    builtin_registry = read_registry(builtin_dir)
    specs = []
    for name in names:
        if name in user_registry:
            specs.append(_spec_from_entry(name, user_registry[name], dataset_dir, text_column, allow_absolute))
        elif name in builtin_registry:
            specs.append(_spec_from_entry(name, builtin_registry[name], builtin_dir, text_column))
        elif os.path.exists(name):
            specs.append(spec_for_path(name, name, text_column))
        elif os.path.exists(os.path.join(dataset_dir, name)):
            specs.append(spec_for_path(name, os.path.join(dataset_dir, name), text_column))
        elif os.path.islink(name):
            raise DataError(f"Data error: source '{name}' is a symbolic link that leads nowhere (a loop, or a "
                            f"missing target).")
        elif os.path.splitext(name)[1].lower() in FILE_BUILDERS or name.startswith((".", os.sep)):
            raise DataError(f"Data error: source '{name}' looks like a file but does not exist (also looked in "
                            f"dataset_dir '{dataset_dir}').")
        else:
            specs.append(hub_source(name, text_column, dataset_dir, [*user_registry, *builtin_registry]))
    return specs


def hub_source(name: str, text_column: str, dataset_dir: str, known: list[str]) -> SourceSpec:
    """A name that is neither a registry entry nor a local path: a hub dataset id, if the hub has it or a copy of it
    is in the local hub cache. Otherwise an error at once (datasets would retry an unreachable hub for about 25 s)
    that says where the name was looked for and suggests the closest registry name."""
    status, detail = hub_lookup(name)
    if status == "found" or (status in ("offline", "unreachable") and in_local_hub_cache(name)):
        return SourceSpec(name, "hub", name, text_column)
    looked = (f"source '{name}' is not in {os.path.join(dataset_dir, REGISTRY_FILE)} nor lmforge's registry, and "
              "not a local path")
    hub = {"missing": "; the hub has no dataset of that id",
           "offline": "; it cannot be looked up on the hub as a dataset id (HF_HUB_OFFLINE is set)",
           "unreachable": f"; the hub, where it would be looked up as a dataset id, cannot be reached ({detail})"}
    raise DataError(f"Data error: {looked}{hub[status]}.{suggest(name, known)}")


@functools.lru_cache(maxsize=64)
def hub_lookup(repo_id: str, repo_type: str = "dataset") -> tuple[str, str | None]:
    """What the hub says of a dataset (or model) id, asked once per process and without retries: ("found", commit or
    None), ("missing", None), ("offline", None) when HF_HUB_OFFLINE is set, or ("unreachable", why)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return "offline", None
    try:
        return "found", HfApi().repo_info(repo_id, repo_type=repo_type, timeout=10).sha
    except (RepositoryNotFoundError, HFValidationError):
        return "missing", None
    except HfHubHTTPError:  # gated, rate-limited, a server error: loading it will say what the hub answers
        return "found", None
    except Exception as err:  # noqa: BLE001 - no route, DNS, timeout: the transport's own error types
        return "unreachable", (str(err).splitlines() or [type(err).__name__])[0][:200]


def in_local_hub_cache(repo_id: str) -> bool:
    """A copy of the hub dataset downloaded before (hub cache or datasets' cache), which loads offline."""
    from huggingface_hub import constants

    hub_copy = os.path.join(constants.HF_HUB_CACHE, f"datasets--{repo_id.replace('/', '--')}")
    datasets_cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(constants.HF_HOME, "datasets")
    return os.path.isdir(hub_copy) or os.path.isdir(os.path.join(datasets_cache, repo_id.replace("/", "___")))
