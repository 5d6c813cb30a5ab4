"""Load text sources into `datasets` objects with one `text` column; mix them and hold out validation data."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import pyarrow as pa
from datasets import Dataset, IterableDataset

from lmforge.data.diagnose import check_data_file, diagnose_file
from lmforge.data.registry import SourceSpec, resolve_sources
from lmforge.errors import DataError

logger = logging.getLogger(__name__)

AnyDataset = Dataset | IterableDataset


@dataclass
class TextSplits:
    train: AnyDataset
    eval: AnyDataset | None


def load_raw(spec: SourceSpec, streaming: bool) -> AnyDataset:
    if spec.kind == "disk":
        loaded = datasets.load_from_disk(spec.path)
        if isinstance(loaded, datasets.DatasetDict):
            if spec.split not in loaded:
                raise DataError(f"Data error: source '{spec.name}': '{spec.path}' has no split '{spec.split}' "
                                f"(splits: {', '.join(loaded)}).")
            loaded = loaded[spec.split]
        return loaded.to_iterable_dataset() if streaming else loaded
    if spec.kind == "file":
        for path in spec.files:
            check_data_file(path, spec.builder)
        try:
            return datasets.load_dataset(spec.builder, data_files=list(spec.files), split="train", streaming=streaming)
        except Exception as err:  # datasets/pyarrow errors do not say which line: find it ourselves
            for path in spec.files:
                diagnose_file(path, spec.builder, spec.text_column)
            raise DataError(f"Data error: source '{spec.name}': could not read {', '.join(spec.files)}: "
                            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if spec.kind == "modelscope":
        return _modelscope_dataset(spec, streaming)
    try:
        return datasets.load_dataset(spec.path, name=spec.subset, split=spec.split, streaming=streaming)
    except Exception as err:
        raise DataError(
            f"Data error: source '{spec.name}' is not in a dataset_info.json registry nor a local path, and loading "
            f"it as a hub dataset failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None


def _modelscope_dataset(spec: SourceSpec, streaming: bool) -> AnyDataset:
    """A registry entry's `ms_hub_url` through ModelScope's MsDataset (`pip install modelscope`)."""
    try:
        from modelscope import MsDataset
    except ImportError:
        raise DataError(f"Data error: source '{spec.name}' is to come from ModelScope ({spec.path}), which needs its "
                        "client: pip install modelscope.") from None
    try:
        loaded = MsDataset.load(spec.path, subset_name=spec.subset, split=spec.split).to_hf_dataset()
    except Exception as err:  # noqa: BLE001 - the client raises its own types for unknown ids and network errors
        raise DataError(f"Data error: ModelScope has no dataset '{spec.path}' for source '{spec.name}' (or cannot "
                        f"be reached): {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return loaded.to_iterable_dataset() if streaming else loaded


def _describe(spec: SourceSpec) -> str:
    return f"'{spec.path}'" if spec.name == spec.path else f"source '{spec.name}' ({spec.path})"


def _first_bad_record(ds: Dataset, column: str) -> int:
    for i, value in enumerate(ds[column]):
        if value is not None and not isinstance(value, str):
            return i
    return -1


def _text_only(ds: AnyDataset, spec: SourceSpec) -> AnyDataset:
    """Keep only the text column, renamed to `text`, after checking it exists and holds strings."""
    columns = ds.column_names if ds.column_names is not None else list(ds.features or {})
    if spec.text_column not in columns:
        raise DataError(f"Data error: {_describe(spec)} has no column '{spec.text_column}' "
                        f"(columns: {', '.join(columns)}). Set `text_column`, or `columns: {{prompt: NAME}}` in "
                        "dataset_info.json.")
    if isinstance(ds, Dataset):
        arrow_type = ds.data.column(spec.text_column).type
        if not (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_null(arrow_type)):
            for path in spec.files:  # name the line where the file format has lines
                diagnose_file(path, spec.builder, spec.text_column)
            bad = _first_bad_record(ds, spec.text_column)
            raise DataError(f"Data error: {_describe(spec)} record {bad}: field '{spec.text_column}' must be a "
                            f"string, got {type(ds[bad][spec.text_column]).__name__}.")
    ds = ds.select_columns([spec.text_column])
    if spec.text_column != "text":
        ds = ds.rename_column(spec.text_column, "text")
    return ds


def _limit(ds: AnyDataset, n: int | None) -> AnyDataset:
    if n is None:
        return ds
    if isinstance(ds, IterableDataset):
        return ds.take(n)
    return ds.select(range(min(n, len(ds))))


def load_source(spec: SourceSpec, streaming: bool = False, max_samples: int | None = None,
                seed: int = 42) -> AnyDataset:
    ds = _text_only(load_raw(spec, streaming), spec)
    if spec.num_samples is not None and isinstance(ds, Dataset):
        # dataset_info.json's num_samples: a fixed-size random sample (repeating documents when it exceeds the size)
        import numpy as np

        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(ds))
        reps = -(-spec.num_samples // max(len(ds), 1))
        ds = ds.select(np.tile(idx, reps)[: spec.num_samples])
    return _limit(ds, max_samples)


def load_texts(dataset: str, dataset_dir: str, *, text_column: str = "text", streaming: bool = False,
               max_samples: int | None = None, mix_strategy: str = "concat",
               interleave_probs: list[float] | None = None, seed: int = 42,
               allow_absolute: bool = False) -> AnyDataset:
    """Every source in `dataset`, each capped at `max_samples`, combined by `mix_strategy`."""
    specs = resolve_sources(dataset, dataset_dir, text_column, allow_absolute)
    parts = [load_source(s, streaming, max_samples, seed) for s in specs]
    for spec, part in zip(specs, parts, strict=True):
        size = f"{len(part):,} documents" if isinstance(part, Dataset) else "streaming"
        logger.info("Source '%s': %s (%s)", spec.name, spec.path, size)
    return mix(parts, mix_strategy, interleave_probs, seed)


def mix(parts: list[AnyDataset], mix_strategy: str, interleave_probs: list[float] | None, seed: int) -> AnyDataset:
    """Several sources as one: concatenated, or interleaved by `interleave_probs` (normalised)."""
    if len(parts) == 1:
        return parts[0]
    if mix_strategy == "concat":
        return datasets.concatenate_datasets(parts)
    probs = interleave_probs
    if probs is not None:
        total = sum(probs)
        probs = [p / total for p in probs]
    stopping = "first_exhausted" if mix_strategy == "interleave_under" else "all_exhausted"
    return datasets.interleave_datasets(parts, probabilities=probs, seed=seed, stopping_strategy=stopping)


def split_validation(ds: AnyDataset, val_size: float, seed: int) -> TextSplits:
    """Hold out `val_size` documents (fraction or count) before tokenization, so no document is in both splits."""
    if val_size <= 0:
        return TextSplits(ds, None)
    if isinstance(ds, IterableDataset):
        n = int(val_size)
        return TextSplits(ds.skip(n), ds.take(n))
    test_size = int(val_size) if val_size >= 1 else val_size
    if (test_size if isinstance(test_size, int) else round(test_size * len(ds))) >= len(ds):
        raise DataError(f"Data error: val_size={val_size} would hold out all {len(ds)} documents.")
    parts = ds.train_test_split(test_size=test_size, seed=seed, shuffle=True)
    return TextSplits(parts["train"], parts["test"])

