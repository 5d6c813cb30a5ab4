"""The work of a synth run: one request per record (and sample) of the dataset, named by a stable id."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from lmforge.config.schema import SynthConfig
from lmforge.data.examples import source_format
from lmforge.data.formats import SkipRecord
from lmforge.data.records import read_records
from lmforge.data.registry import resolve_sources
from lmforge.verify.judge import question_of


@dataclass
class WorkItem:
    id: str
    source: str
    record: int
    messages: list[dict]  # the request
    extra: dict[str, Any]  # what the output record needs besides the answer


def work_items(cfg: SynthConfig) -> tuple[list[WorkItem], Counter]:
    """Every request of the run, in data order; records that cannot be one are counted by reason."""
    s, d = cfg.synth, cfg.data
    items, skipped = [], Counter()
    for spec in resolve_sources(d.dataset, d.dataset_dir, allow_absolute=d.allow_absolute_file_name):
        records = read_records(spec)[: d.max_samples] if d.max_samples else read_records(spec)
        fmt = source_format(spec, records) if s.synth_task != "rewrite" else None
        for index, record in enumerate(records):
            try:
                items += _items(cfg, spec.name, index, record, fmt)
            except (SkipRecord, TypeError, KeyError, ValueError) as err:
                skipped[str(err)[:120]] += 1
    return items, skipped


def _items(cfg: SynthConfig, source: str, index: int, record: dict, fmt: Any) -> list[WorkItem]:
    s = cfg.synth
    if not isinstance(record, dict):
        raise SkipRecord("record is not an object")
    if s.synth_task == "rewrite":
        text = record.get(cfg.data.text_column)
        if not isinstance(text, str) or not text.strip():
            raise SkipRecord(f"no text in '{cfg.data.text_column}'")
        request = [{"role": "user", "content": s.rewrite_template.format(text=text)}]
        return [WorkItem(f"{source}:{index}", source, index, request, {"original": text})]
    prompt = fmt.to_example(record, "prompt")["messages"]
    if s.synth_task == "answer":
        return [WorkItem(f"{source}:{index}:{n}", source, index, prompt, {"prompt": prompt})
                for n in range(s.num_samples)]
    responses = record.get(s.responses_column)
    if not (isinstance(responses, list) and len(responses) == 2 and all(isinstance(r, str) and r for r in responses)):
        raise SkipRecord(f"'{s.responses_column}' must hold two answers")
    question = question_of(prompt)
    request = [{"role": "user", "content": s.judge_template.format(rubric=s.judge_rubric, prompt=question,
                                                                      a=responses[0], b=responses[1])}]
    return [WorkItem(f"{source}:{index}", source, index, request, {"prompt": prompt, "responses": responses})]


