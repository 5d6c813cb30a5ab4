"""`lmforge synth CONFIG`: a stronger model behind an OpenAI-compatible endpoint produces training data.

Tasks (`synth_task`): `answer` (the teacher answers each prompt of `dataset`, any layout lmforge reads, `num_samples`
times: sft records), `judge` (it compares each record's two `responses` by `judge_rubric`: dpo pairs), `rewrite`
(`rewrite_template` applied to each record's text: records with the new text). Requests run `concurrency` at a
time, retried on 429/5xx/timeouts, within `max_total_tokens`, with a progress bar (tokens/s, cost when prices are
given).

Output (`output_dir`): `data.jsonl` appended record by record, each with the id of the work item it answers
(`source:record[:sample]`); `filtered.jsonl` (items answered but not kept, with the reason); `dataset_info.json`
registering data.jsonl as `synth` (train on it with `dataset: synth`, `dataset_dir: OUTPUT_DIR`); `stats.json`
(kept, filtered by reason, failed requests by status, tokens, cost). A killed run started again skips every item
already in data.jsonl or filtered.jsonl (a line cut by the kill is dropped first), so nothing is asked twice or
written twice; failed items are asked again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from typing import Any

from lmforge.config.schema import SynthConfig
from lmforge.data.formats import SkipRecord
from lmforge.errors import ConfigError
from lmforge.jsonl import write_json
from lmforge.synth.client import ChatClient, RequestFailed
from lmforge.synth.work import WorkItem, work_items
from lmforge.verify.judge import verdict

logger = logging.getLogger(__name__)

DATA_FILE, FILTERED_FILE, STATS_FILE = "data.jsonl", "filtered.jsonl", "stats.json"


def output_record(task: str, item: WorkItem, reply: dict[str, Any]) -> dict[str, Any]:
    """The record written for an answered item; SkipRecord (kept out, counted) when the answer cannot be used."""
    text = (reply.get("content") or "").strip()
    base = {"id": item.id, "source": item.source, "record": item.record}
    if task == "answer":
        if not text:
            raise SkipRecord("empty answer")
        message = {"role": "assistant", "content": text}
        reasoning = reply.get("reasoning_content") or reply.get("reasoning")
        if reasoning:  # kept apart, as the training data layout takes it
            message["reasoning_content"] = reasoning
        return {**base, "messages": item.extra["prompt"] + [message]}
    if task == "rewrite":
        if not text:
            raise SkipRecord("empty rewrite")
        return {**base, "text": text, "original": item.extra["original"]}
    choice = verdict(text)
    if choice is None:
        raise SkipRecord("unparseable verdict")
    a, b = item.extra["responses"]
    chosen, rejected = (a, b) if choice == "A" else (b, a)
    return {**base, "messages": item.extra["prompt"], "chosen": {"role": "assistant", "content": chosen},
            "rejected": {"role": "assistant", "content": rejected}}


def _done_ids(path: str) -> set[str]:
    """Ids already written to a JSON-lines file; a last line cut by a kill is removed from the file."""
    if not os.path.isfile(path):
        return set()
    with open(path, "rb") as fh:
        data = fh.read()
    keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    if keep != data:
        with open(path, "wb") as fh:
            fh.write(keep)
    return {json.loads(line)["id"] for line in keep.decode("utf-8").splitlines() if line.strip()}


REGISTRY = {"answer": {"file_name": DATA_FILE, "formatting": "openai", "columns": {"messages": "messages"}},
            "self_instruct": {"file_name": DATA_FILE, "formatting": "openai", "columns": {"messages": "messages"}},
            "judge": {"file_name": DATA_FILE, "formatting": "openai",
                      "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}},
            "rewrite": {"file_name": DATA_FILE, "columns": {"prompt": "text"}}}


def run_synth(cfg: SynthConfig) -> dict[str, Any]:
    s = cfg.synth
    os.makedirs(s.output_dir, exist_ok=True)
    data_path, filtered_path = os.path.join(s.output_dir, DATA_FILE), os.path.join(s.output_dir, FILTERED_FILE)
    done = _done_ids(data_path) | _done_ids(filtered_path)
    written: dict[str, Any] = {}
    if s.synth_task == "self_instruct":
        from lmforge.synth.self_instruct import grow_instructions

        written = asyncio.run(grow_instructions(cfg))
        items, skipped = written.pop("items"), Counter()
    else:
        items, skipped = work_items(cfg)
    todo = [item for item in items if item.id not in done]
    logger.info("synth %s: %d work items, %d done before, %d to ask (%d records unusable)", s.synth_task,
                len(items), len(items) - len(todo), len(todo), sum(skipped.values()))
    write_json(os.path.join(s.output_dir, "dataset_info.json"), {"synth": REGISTRY[s.synth_task]})
    stats = asyncio.run(_ask_all(cfg, todo, data_path, filtered_path, "answer" if s.synth_task == "self_instruct"
                                 else s.synth_task))
    stats.update(work_items=len(items), done_before=len(items) - len(todo), unusable_records=dict(skipped),
                 **written)
    stats["kept_total"] = len(_done_ids(data_path))
    write_json(os.path.join(s.output_dir, STATS_FILE), stats)
    return stats


async def _ask_all(cfg: SynthConfig, todo: list[WorkItem], data_path: str, filtered_path: str, task: str
                   ) -> dict[str, Any]:
    from tqdm.auto import tqdm

    s = cfg.synth
    api_key = os.environ.get(s.teacher_api_key_env) if s.teacher_api_key_env else None
    client = ChatClient(s.teacher_base_url, s.teacher_model, api_key, s.request_timeout, s.max_retries)
    params = {"temperature": s.temperature, "max_tokens": s.max_tokens}
    queue: asyncio.Queue[WorkItem] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    kept, filtered, failed = 0, Counter(), Counter()
    started = time.monotonic()
    bar = tqdm(total=len(todo), desc=f"synth {s.synth_task}", unit="item")
    with open(data_path, "a", encoding="utf-8") as data, open(filtered_path, "a", encoding="utf-8") as rejects:

        async def worker() -> None:
            nonlocal kept
            while not queue.empty():
                if s.max_total_tokens is not None and client.usage.total >= s.max_total_tokens:
                    return
                item = queue.get_nowait()
                try:
                    reply = await client.chat(item.messages, **params)
                except RequestFailed as err:
                    failed[err.status] += 1
                    bar.update()
                    continue
                try:
                    record = output_record(task, item, reply)
                except SkipRecord as err:
                    filtered[str(err)] += 1
                    rejects.write(json.dumps({"id": item.id, "reason": str(err)}, ensure_ascii=False) + "\n")
                    rejects.flush()
                else:  # one whole line at a time: a kill leaves at most a cut last line, dropped on restart
                    data.write(json.dumps(record, ensure_ascii=False) + "\n")
                    data.flush()
                    kept += 1
                bar.update()
                elapsed = max(time.monotonic() - started, 1e-9)
                bar.set_postfix(tokens_per_s=f"{client.usage.completion_tokens / elapsed:.0f}",
                                **({"cost": f"{_cost(s, client.usage):.4f}"} if _priced(s) else {}))

        try:
            await asyncio.gather(*(worker() for _ in range(s.concurrency)))
        finally:
            bar.close()
            await client.close()
    u = client.usage
    return {"kept": kept, "filtered": dict(filtered), "failed_requests": dict(failed),
            "failed_attempts_by_status": dict(u.failures), "retries": u.retries,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "stopped_by_token_budget": s.max_total_tokens is not None and u.total >= s.max_total_tokens,
            **({"cost": round(_cost(s, u), 6)} if _priced(s) else {}),
            "seconds": round(time.monotonic() - started, 3)}


def _priced(s: Any) -> bool:
    return s.price_per_million_input is not None or s.price_per_million_output is not None


def _cost(s: Any, usage: Any) -> float:
    return (usage.prompt_tokens * (s.price_per_million_input or 0) +
            usage.completion_tokens * (s.price_per_million_output or 0)) / 1e6


def check_endpoint(cfg: SynthConfig) -> None:
    if not cfg.synth.teacher_base_url.startswith(("http://", "https://")):
        raise ConfigError(f"Config error ({cfg.source}): 'teacher_base_url' must be an http(s) URL, got "
                          f"'{cfg.synth.teacher_base_url}'.")
