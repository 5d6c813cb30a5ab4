import pytest
import torch
from transformers import AutoModelForCausalLM

from lmforge.data.chunking import BlockChunker
from lmforge.data.collate import IGNORE_INDEX, PretrainCollator

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them

DOCS = [[5, 17, 42, 8, 0], [9, 9, 33, 71, 12, 60, 0], [101, 7, 0], [44, 45, 46, 0]]  # 0 is EOS here


def separate_loss(model, docs):
    """Mean token loss when each document is run through the model on its own."""
    total, count = 0.0, 0
    for doc in docs:
        ids = torch.tensor([doc])
        out = model(input_ids=ids, labels=ids)
        total += out.loss.item() * (len(doc) - 1)
        count += len(doc) - 1
    return total / count


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_neat_packing_loss_equals_each_document_alone(tiny_model_dir, attn):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    block = sum(len(d) for d in DOCS)
    chunker = BlockChunker(block, positions=True)
    out = chunker({"input_ids": DOCS})
    batch = PretrainCollator()([{"input_ids": out["input_ids"][0], "position_ids": out["position_ids"][0]}])
    assert batch["position_ids"][0].tolist() == [i for d in DOCS for i in range(len(d))]
    # nothing is predicted across a boundary: the first token of each later document is not a target
    starts = [sum(len(d) for d in DOCS[:i]) for i in range(1, len(DOCS))]
    assert all(batch["labels"][0, s].item() == IGNORE_INDEX for s in starts)
    with torch.no_grad():
        packed = model(**batch).loss.item()
        alone = separate_loss(model, DOCS)
        plain = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.item()
    assert packed == pytest.approx(alone, abs=1e-5)
    assert plain != pytest.approx(alone, abs=1e-5)
    # Without document masking the last document sees the others: its logits move far beyond rounding noise.
    start = block - len(DOCS[-1])
    with torch.no_grad():
        by_itself = model(input_ids=torch.tensor([DOCS[-1]])).logits[0]
        masked = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits[0, start:]
        unmasked = model(input_ids=batch["input_ids"]).logits[0, start:]
    rounding = (masked - by_itself).abs().max().item()
    assert rounding < 1e-5 and (unmasked - by_itself).abs().max().item() > 100 * max(rounding, 1e-7)


def test_two_blocks_in_a_batch_keep_their_own_boundaries(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    block = 10
    chunker = BlockChunker(block, positions=True)
    out = chunker({"input_ids": DOCS})
    features = [{"input_ids": i, "position_ids": p} for i, p in zip(out["input_ids"], out["position_ids"],
                                                                     strict=True)]
    batch = PretrainCollator()(features)
    with torch.no_grad():
        together = model(**batch).logits
        for row, feature in enumerate(features):
            alone = model(**PretrainCollator()([feature])).logits[0]
            assert torch.allclose(together[row], alone, atol=1e-5)


def test_data_dump_of_a_pt_config_shows_the_collator_labels(tmp_path):
    import json

    from lmforge.cli import main
    from lmforge.data.collate import IGNORE_INDEX
    from tests.conftest import scratch_args

    dump = tmp_path / "blocks.jsonl"
    assert main(["data", "dump", *scratch_args(tmp_path / "out", neat_packing=True), "--output", str(dump)]) == 0
    rows = [json.loads(line) for line in open(dump)]
    assert rows and all(len(r["input_ids"]) == 64 for r in rows)
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert [i for i, lab in enumerate(r["labels"]) if lab == IGNORE_INDEX] == starts
        assert all(r["labels"][i] == r["input_ids"][i] for i in range(64) if i not in starts)
