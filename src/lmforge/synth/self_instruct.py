"""`synth_task: self_instruct`: new instructions grown from seed instructions (Self-Instruct), then answered.

Each round shows the teacher a few instructions of the pool (seeds and instructions kept so far, sampled with a
seeded generator) and asks for more; each line it returns is cleaned of its numbering and checked: too short (under 3
words) or too long (over 150) is malformed, a ROUGE-L F1 with any pool instruction at `similarity_threshold` or more
is a near-duplicate; the rest join the pool until `num_instructions` are kept. Kept instructions are appended to
`instructions.jsonl` as they come (a rerun continues the pool), then answered like `synth_task: answer`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from collections import Counter
from typing import Any

from lmforge.config.schema import SynthConfig
from lmforge.metrics import rouge_l, words
from lmforge.synth.client import ChatClient, RequestFailed
from lmforge.synth.work import WorkItem, work_items

INSTRUCTIONS_FILE = "instructions.jsonl"
_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")
MAX_ROUNDS_PER_INSTRUCTION = 3  # rounds allowed per wanted instruction before giving up (a teacher that repeats)


def seed_instructions(cfg: SynthConfig) -> list[str]:
    seeds = []
    answer = dataclasses.replace(cfg, synth=dataclasses.replace(cfg.synth, synth_task="answer", num_samples=1))
    for item in work_items(answer)[0]:
        text = "\n".join(m["content"] for m in item.messages if m["role"] == "user")
        if text and text not in seeds:
            seeds.append(text)
    return seeds


def check(candidate: str, pool_words: list[list[str]], threshold: float) -> str | None:
    """Why a candidate instruction is dropped (None: kept)."""
    tokens = words(candidate)
    if len(tokens) < 3:
        return "malformed: too short"
    if len(tokens) > 150:
        return "malformed: too long"
    if any(rouge_l(tokens, other) >= threshold for other in pool_words):
        return "near-duplicate"
    return None


async def grow_instructions(cfg: SynthConfig) -> dict[str, Any]:
    """The kept instructions as answer work items, and the counts of this phase."""
    s = cfg.synth
    path = os.path.join(s.output_dir, INSTRUCTIONS_FILE)
    kept = [json.loads(line)["instruction"] for line in open(path, encoding="utf-8")] if os.path.isfile(path) else []
    pool = seed_instructions(cfg) + kept
    pool_words = [words(p) for p in pool]
    dropped: Counter = Counter()
    rng = random.Random(len(kept))
    api_key = os.environ.get(s.teacher_api_key_env) if s.teacher_api_key_env else None
    client = ChatClient(s.teacher_base_url, s.teacher_model, api_key, s.request_timeout, s.max_retries)
    rounds, failed = 0, Counter()
    try:
        with open(path, "a", encoding="utf-8") as out:
            while len(kept) < s.num_instructions and rounds < MAX_ROUNDS_PER_INSTRUCTION * s.num_instructions:
                rounds += 1
                examples = "\n".join(f"{i + 1}. {p}" for i, p in enumerate(rng.sample(pool, min(len(pool), 4))))
                request = s.self_instruct_template.format(examples=examples, count=min(8, s.num_instructions))
                try:
                    reply = await client.chat([{"role": "user", "content": request}], temperature=s.temperature,
                                              max_tokens=s.max_tokens)
                except RequestFailed as err:
                    failed[err.status] += 1
                    continue
                for line in (reply.get("content") or "").splitlines():
                    candidate = _NUMBERING.sub("", line).strip()
                    if not candidate:
                        continue
                    reason = check(candidate, pool_words, s.similarity_threshold)
                    if reason:
                        dropped[reason] += 1
                        continue
                    kept.append(candidate)
                    pool.append(candidate)
                    pool_words.append(words(candidate))
                    out.write(json.dumps({"instruction": candidate}, ensure_ascii=False) + "\n")
                    out.flush()
                    if len(kept) >= s.num_instructions:
                        break
    finally:
        await client.close()
    items = [WorkItem(f"self:{i}", INSTRUCTIONS_FILE, i, [{"role": "user", "content": text}],
                      {"prompt": [{"role": "user", "content": text}]}) for i, text in enumerate(kept)]
    return {"items": items, "instructions_kept": len(kept), "instructions_dropped": dict(dropped),
            "instruction_rounds": rounds, "instruction_requests_failed": dict(failed)}
