"""The calibration data of the quantizing exports (`gguf_imatrix`, `export_quantization: gptq`): the user's own
examples, tokenized as the model trained on them."""

from __future__ import annotations

import dataclasses
import logging

import yaml

from lmforge.config.data import DataArguments
from lmforge.config.schema import ExportConfig
from lmforge.config.validate import run_config_file
from lmforge.errors import DataError

logger = logging.getLogger(__name__)


def calibration_data(cfg: ExportConfig) -> tuple[DataArguments, str]:
    """The calibration data and its stage: `export_quantization_dataset` when set, else the export's `dataset`, else
    the data keys of the exported run's lmforge_config.yaml (its dataset, dataset_dir, template, cutoff_len, ...)."""
    if cfg.export.export_quantization_dataset:
        return dataclasses.replace(cfg.data, dataset=cfg.export.export_quantization_dataset), "sft"
    if cfg.data.dataset:
        return cfg.data, "sft"
    path = run_config_file(cfg)
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    flat = {k: v for section in raw.values() if isinstance(section, dict) for k, v in section.items()}
    flat.update({k: v for k, v in raw.items() if not isinstance(v, dict)})
    known = {f.name for f in dataclasses.fields(DataArguments)}
    data = dataclasses.replace(cfg.data, **{k: v for k, v in flat.items() if k in known})
    logger.info("Calibration data: %s (from %s)", data.dataset, path)
    return data, str(flat.get("stage", "sft"))


def calibration_tokens(cfg: ExportConfig, tokenizer) -> list[list[int]]:
    """Up to `export_quantization_samples` token sequences of the calibration data, as the model trained on them."""
    from lmforge.data.examples import build_examples
    from lmforge.data.pretrain import build_pretrain_data

    data, stage = calibration_data(cfg)
    if data.max_samples is None:  # records enough for the examples asked (each record gives one, unless skipped)
        data = dataclasses.replace(data, max_samples=cfg.export.export_quantization_samples)
    if stage == "pt":
        rows = build_pretrain_data(data, tokenizer, seed=0).train
    else:  # the conversations of any later stage's data, rendered by the template as SFT examples
        rows = build_examples(data, tokenizer, seed=0, kind="sft").train
    count = min(len(rows), cfg.export.export_quantization_samples)
    if count == 0:
        raise DataError(f"Data error: the calibration data '{data.dataset}' has no usable example.")
    return [list(rows[i]["input_ids"]) for i in range(count)]
