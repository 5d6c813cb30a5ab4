"""Write a pretraining corpus of a given size for the preparation benchmark: `python bench/make_corpus.py OUT.jsonl
--size 2GiB`. Each line is {"text": ...}, a run of 50 to 800 words drawn (seeded) from LLaMA-Factory's c4_demo
documents in ../shared/data, so its tokens look like web text to a real tokenizer."""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

C4 = Path(__file__).resolve().parents[2] / "shared" / "data" / "llamafactory_demo" / "c4_demo.jsonl"
UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9}


def size_in_bytes(text: str) -> int:
    found = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not found or found.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 200MiB, 2GiB)")
    return int(float(found.group(1)) * UNITS[found.group(2).lower()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output")
    parser.add_argument("--size", type=size_in_bytes, default=size_in_bytes("2GiB"))
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    words = " ".join(json.loads(line)["text"] for line in C4.read_text(encoding="utf-8").splitlines()).split()
    rng = random.Random(ns.seed)
    written = 0
    with open(ns.output, "w", encoding="utf-8") as fh:
        while written < ns.size:
            length = rng.randint(50, 800)
            start = rng.randrange(len(words) - length)
            line = json.dumps({"text": " ".join(words[start:start + length])}) + "\n"
            fh.write(line)
            written += len(line.encode("utf-8"))
    print(f"wrote {written:,} bytes to {ns.output}")


if __name__ == "__main__":
    main()
