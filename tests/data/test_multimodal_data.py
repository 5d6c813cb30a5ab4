"""Multimodal examples: ids equal the model's own processor, labels are exactly the assistant turns, image tokens are
never trained, and bad records (placeholder count, missing or corrupt file) are counted skips naming record and
file."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from lmforge.config.model import ModelArguments
from lmforge.data import media
from lmforge.data.collate import IGNORE_INDEX
from lmforge.data.examples import build_examples, source_conversations
from lmforge.data.multimodal import as_parts, media_token_ids
from lmforge.data.registry import resolve_sources
from lmforge.errors import DataError
from lmforge.model.multimodal import load_processor
from tests.conftest import LF_DEMO, write_jsonl
from tests.data.conftest import data_args
from tests.data.test_template import trained_runs

IMAGES = LF_DEMO / "mllm_demo_data"
# the end-of-turn token each template writes after an assistant message (LLaVA-1.5 writes none)
END_OF_TURN = {"llava_dir": "", "llava_next_dir": "", "gemma3_dir": "<end_of_turn>"}


@pytest.fixture(params=["llava_dir", "llava_next_dir", "gemma3_dir"])
def vlm(request):
    return request.param, load_processor(ModelArguments(model_name_or_path=request.getfixturevalue(request.param)))


def test_mllm_demo_ids_are_the_processors_and_labels_the_assistants(vlm):
    name, processor = vlm
    args = data_args(dataset="mllm_demo", cutoff_len=1024)
    data = build_examples(args, processor.tokenizer, 0, "sft", processor)
    assert len(data.train) == 6 and data.stats["mllm_demo"]["skipped"] == 0
    _, conversations, _ = source_conversations(resolve_sources("mllm_demo", str(LF_DEMO))[0], args, 0)
    never = media_token_ids(processor)
    for row, (_, example) in zip(data.train, conversations, strict=True):
        images = [media.load_image(ref, args.image_max_pixels, args.image_min_pixels) for ref in example["images"]]
        assert row["images"] == [str(IMAGES / p.rsplit("/", 1)[1]) for p in example["images"]]
        expected = processor.apply_chat_template(as_parts(example["messages"]), tokenize=True, return_dict=True,
                                                 processor_kwargs={"images": images})
        assert row["input_ids"] == list(expected["input_ids"][0])
        # one run of image tokens per image, none of them trained
        ids = row["input_ids"]
        assert sum(1 for a, b in zip(ids, ids[1:], strict=False) if b in never and a not in never) >= len(images)
        assert not any(label in never for label in row["labels"] if label != IGNORE_INDEX)
        replies = [m["content"] for m in example["messages"] if m["role"] == "assistant"]
        runs = trained_runs(row["input_ids"], row["labels"])
        assert [processor.tokenizer.decode(run).strip() for run in runs] == \
            [(reply + END_OF_TURN[name]).strip() for reply in replies]
        if "token_type_ids" in row:  # Gemma 3: exactly the image tokens are marked
            assert [t == processor.tokenizer.image_token_id for t in row["input_ids"]] == \
                [bool(t) for t in row["token_type_ids"]]


def test_mask_history_and_train_on_prompt_follow_the_text_rule(vlm):
    _, processor = vlm
    last = build_examples(data_args(dataset="mllm_demo", mask_history=True), processor.tokenizer, 0, "sft",
                          processor).train[0]
    assert len(trained_runs(last["input_ids"], last["labels"])) == 1
    everything = build_examples(data_args(dataset="mllm_demo", train_on_prompt=True), processor.tokenizer, 0, "sft",
                                processor).train[0]
    never = media_token_ids(processor)
    ids, labels = everything["input_ids"], everything["labels"]
    assert not any(label in never for label in labels)
    # untrained: media tokens, and only the framing the processor writes around them (Gemma 3's blank lines)
    for i, (token, label) in enumerate(zip(ids, labels, strict=True)):
        if label == IGNORE_INDEX and token not in never and i > 0:
            assert any(t in never for t in ids[max(i - 3, 0): i + 4]), (i, processor.tokenizer.decode([token]))


def _record(text: str, images: list[str], answer: str = "A picture.") -> dict:
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}],
            "images": images}


def test_bad_multimodal_records_are_counted_skips_naming_record_and_file(tmp_path, vlm):
    _, processor = vlm
    shutil.copy(IMAGES / "1.jpg", tmp_path / "good.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    data = write_jsonl(tmp_path / "mm.jsonl", [
        _record("<image>Who are they?", ["good.jpg"]),
        _record("<image><image>Two?", ["good.jpg"]),
        _record("<image>Where?", ["missing.jpg"]),
        _record("<image>Broken?", ["corrupt.jpg"]),
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<image>"}],
         "images": ["good.jpg"]},
    ])
    out = build_examples(data_args(dataset=str(data), dataset_dir=str(tmp_path)), processor.tokenizer, 0, "sft",
                         processor)
    stats, = out.stats.values()
    assert (stats["records"], stats["examples"], stats["skipped"]) == (5, 1, 4)
    reasons = " | ".join(stats["skip_reasons"])
    assert "2 <image> placeholder(s) but 1 image file(s)" in reasons
    assert "media file 'missing.jpg' not found" in reasons
    assert "corrupt.jpg' cannot be read" in reasons
    assert "an assistant message holds a <image>" in reasons


def test_openai_image_parts_give_the_same_example_as_the_images_column(tmp_path, vlm):
    _, processor = vlm
    path = IMAGES / "2.jpg"
    data_url = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
    def parts(url):
        return {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "Who is he?"},
                                         {"type": "image_url", "image_url": {"url": url}}]},
            {"role": "assistant", "content": "Thomas Muller."}]}
    column = _record("Who is he?<image>", [str(path)], "Thomas Muller.")
    rows = {}
    for name, record in {"column": column, "file_url": parts(f"file://{path}"), "data_url": parts(data_url)}.items():
        file = write_jsonl(tmp_path / f"{name}.jsonl", [record])
        ex = build_examples(data_args(dataset=str(file)), processor.tokenizer, 0, "sft", processor).train[0]
        rows[name] = (ex["input_ids"], ex["labels"])
    assert rows["column"] == rows["file_url"] == rows["data_url"]


def test_truncation_drops_old_exchanges_with_their_images_and_never_cuts_an_image(tmp_path, vlm):
    _, processor = vlm
    long_answer = "They are celebrating on the soccer field after a goal. " * 3
    record = {"messages": [{"role": "user", "content": "<image>Who are they?"},
                           {"role": "assistant", "content": long_answer},
                           {"role": "user", "content": "<image>And now?"},
                           {"role": "assistant", "content": "Still celebrating."}],
              "images": [str(IMAGES / "1.jpg"), str(IMAGES / "2.jpg")]}
    file = write_jsonl(tmp_path / "long.jsonl", [record])
    full = build_examples(data_args(dataset=str(file)), processor.tokenizer, 0, "sft", processor).train[0]
    cut = build_examples(data_args(dataset=str(file), cutoff_len=len(full["input_ids"]) - 5), processor.tokenizer,
                         0, "sft", processor)
    assert cut.train[0]["images"] == [str(IMAGES / "2.jpg")] and cut.train[0]["truncated"]
    first = [i for i, t in enumerate(full["input_ids"]) if t in media_token_ids(processor)][0]
    with pytest.raises(DataError, match="image's tokens do not fit within cutoff_len"):
        build_examples(data_args(dataset=str(file), cutoff_len=first + 1, mask_history=True), processor.tokenizer,
                       0, "sft", processor)


def test_a_text_model_skips_multimodal_records_by_name(chat_tok):
    with pytest.raises(DataError, match="has images but the model takes text only"):
        build_examples(data_args(dataset="mllm_demo"), chat_tok, 0, "sft")


def test_preference_pairs_keep_their_images_on_both_sides(tmp_path, vlm):
    _, processor = vlm
    file = write_jsonl(tmp_path / "pairs.jsonl", [{
        "messages": [{"role": "user", "content": "<image>Who are they?"}],
        "chosen": {"role": "assistant", "content": "Kane and Gretzka."},
        "rejected": {"role": "assistant", "content": "Nobody."}, "images": [str(IMAGES / "1.jpg")]}])
    pair = build_examples(data_args(dataset=str(file)), processor.tokenizer, 0, "pair", processor).train[0]
    never = media_token_ids(processor)
    for side in ("chosen", "rejected"):
        ids = pair[f"{side}_input_ids"]
        assert any(t in never for t in ids)
        assert len(trained_runs(ids, pair[f"{side}_labels"])) == 1
    assert pair["images"] == [str(IMAGES / "1.jpg")]


def test_data_dump_and_preview_show_one_mark_per_image(llava_dir, tmp_path, capsys):
    from lmforge.cli import main

    common = [f"model_name_or_path={llava_dir}", "stage=sft", "dataset=mllm_demo", f"dataset_dir={LF_DEMO}"]
    assert main(["data", "dump", *common, "--output", str(tmp_path / "dump.jsonl")]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "dump.jsonl")]
    processor = load_processor(ModelArguments(model_name_or_path=llava_dir))
    direct = build_examples(data_args(dataset="mllm_demo"), processor.tokenizer, 0, "sft", processor).train
    assert [(r["input_ids"], r["labels"], r["images"]) for r in rows] == \
        [(d["input_ids"], d["labels"], d["images"]) for d in direct]
    capsys.readouterr()
    assert main(["data", "preview", *common]) == 0
    shown = capsys.readouterr().out
    first = shown.split("── example 1")[0]
    assert first.count("⟪<image> ×4⟫") == 2 and "<image><image>" not in shown  # record 0 has two images


def test_env_says_what_a_model_takes(llava_dir, tiny_model_dir, capsys):
    from lmforge.cli import main

    assert main(["env", llava_dir, tiny_model_dir]) == 0
    out = capsys.readouterr().out
    assert f"- model {llava_dir}: llava (vision-language), takes text, image" in out
    assert f"- model {tiny_model_dir}: qwen2, takes text" in out


@pytest.mark.parametrize("override, message", [
    ("packing=true", "multimodal examples are not packed"),
    ("stage=kto", "trains those with `stage: sft` or `stage: dpo`, not `kto`"),
])
def test_unsupported_multimodal_settings_exit_2_naming_the_key(llava_dir, override, message, capsys):
    from lmforge.cli import main

    args = [f"model_name_or_path={llava_dir}", "stage=sft", "dataset=mllm_demo", f"dataset_dir={LF_DEMO}", override]
    assert main(["data", "preview", *args]) == 2
    assert message in capsys.readouterr().err


def test_videos_are_read_at_video_fps_up_to_video_maxlen(tmp_path):
    pytest.importorskip("av")
    clip = str(IMAGES / "1.mp4")  # 9.72 s, 243 frames of 640x360
    frames = media.load_video(clip, fps=1.0, maxlen=128, max_pixels=64 * 64, min_pixels=16)
    assert len(frames) == 9 and all(f.size[0] * f.size[1] <= 64 * 64 and f.mode == "RGB" for f in frames)
    assert len(media.load_video(clip, fps=2.0, maxlen=4, max_pixels=64 * 64, min_pixels=16)) == 4
    assert len(media.load_video(str(IMAGES / "2.avi"), fps=2.0, maxlen=128, max_pixels=64 * 64, min_pixels=16)) > 1
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(media.SkipRecord, match="video '.*broken.mp4' cannot be read"):
        media.load_video(str(tmp_path / "broken.mp4"), fps=2.0, maxlen=4, max_pixels=64 * 64, min_pixels=16)


def test_a_model_without_a_video_processor_skips_video_records_by_name(vlm):
    _, processor = vlm
    with pytest.raises(DataError, match="it has videos but the model takes no video"):
        build_examples(data_args(dataset="mllm_video_demo"), processor.tokenizer, 0, "sft", processor)
