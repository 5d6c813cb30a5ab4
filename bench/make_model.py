"""Write a randomly initialised Qwen2-style model and an 8,192-token byte-level BPE tokenizer (trained on the
project's quickstart corpus and the alpaca_en_demo instructions in ../shared/data, chatml template) for the
benchmarks: `python bench/make_model.py OUT [--hidden 512 --layers 4 --vocab N]`.

`--vocab` sets the model's vocabulary (embedding and head rows) independently of the 8,192-token tokenizer, so the
memory of the loss at a Qwen-size vocabulary (151,936) can be measured without a hub download."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lmforge.config.model import ModelArguments
from lmforge.data.chat_templates import apply_template_choice
from lmforge.model.build import build_model
from lmforge.model.tokenizer import train_bpe_tokenizer
from lmforge.resources import quickstart_corpus

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llamafactory_demo" / "alpaca_en_demo.json"


def alpaca_texts() -> list[str]:
    if not ALPACA.is_file():
        return []
    return [" ".join(str(r.get(k, "")) for k in ("instruction", "input", "output")) for r in json.loads(
        ALPACA.read_text(encoding="utf-8"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=None, help="model vocabulary (default: the tokenizer's)")
    ns = parser.parse_args()
    tokenizer = train_bpe_tokenizer(quickstart_corpus.generate() + alpaca_texts(), 8192,
                                    ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    apply_template_choice(tokenizer, "chatml")
    overrides = {"hidden_size": ns.hidden, "num_hidden_layers": ns.layers, "num_attention_heads": ns.heads,
                 "num_key_value_heads": max(ns.heads // 2, 1), "intermediate_size": 3 * ns.hidden,
                 "max_position_embeddings": 2048, "tie_word_embeddings": True}
    torch.manual_seed(0)
    model = build_model(ModelArguments(from_scratch=True, model_type="qwen2", config_overrides=overrides), tokenizer)
    if ns.vocab:
        model.resize_token_embeddings(ns.vocab)
    model.save_pretrained(ns.out)
    tokenizer.save_pretrained(ns.out)
    print(json.dumps({"out": ns.out, "parameters": sum(p.numel() for p in model.parameters()),
                      "vocab": model.config.vocab_size, **overrides}))


if __name__ == "__main__":
    main()
