"""A pretrained checkpoint's context extended by RoPE scaling (`rope_scaling`, `max_position_embeddings`): a tiny
model with a 64-token context trains on 256-token blocks with yarn x4, the saved config carries the scaling (its rope
base kept), the served model takes prompts beyond the old limit that the original refuses, and its GGUF says yarn."""

from __future__ import annotations

import json
import queue
import shutil

import pytest

from lmforge.cli import main
from lmforge.runlog import read_log
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow  # training runs

OLD_CONTEXT = 64


def _shortened(model_dir: str, path) -> str:
    shutil.copytree(model_dir, path, dirs_exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": OLD_CONTEXT}))
    return str(path)


@pytest.fixture(scope="module")
def short_model(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny Qwen2 with a context of 64 tokens."""
    return _shortened(tiny_model_dir, tmp_path_factory.mktemp("context-64"))


@pytest.fixture(scope="module")
def short_qwen3(real_model, tmp_path_factory) -> str:
    """A tiny model of the real Qwen3 family (its config, tokenizer and template) with a context of 64 tokens."""
    return _shortened(real_model("qwen3"), tmp_path_factory.mktemp("qwen3-context-64"))


def _prompt_of(tokens: int) -> list[int]:
    return [5 + i % 50 for i in range(tokens)]


@pytest.mark.parametrize("model", ["short_model", "short_qwen3"])
def test_a_pretrained_model_trains_and_generates_past_its_old_context(model, request, tmp_path, quickstart_texts):
    from transformers import AutoConfig

    from lmforge.config.parse import load_target_config
    from lmforge.model.sampling import SamplingParams
    from lmforge.serve.engine import RequestError
    from lmforge.serve.load import load_engine

    short_model = request.getfixturevalue(model)
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in quickstart_texts[:400]])
    out = tmp_path / "long"
    assert main(["train", "stage=pt", f"model_name_or_path={short_model}", f"dataset={docs}", "cutoff_len=256",
                 "rope_scaling.rope_type=yarn", "rope_scaling.factor=4", f"output_dir={out}", "max_steps=12",
                 "per_device_train_batch_size=4", "learning_rate=3e-3", "logging_steps=1", "save_strategy=no",
                 "report_to=none", "disable_tqdm=true"]) == 0
    losses = [r["loss"] for r in read_log(str(out)) if "loss" in r]
    assert losses[-1] < losses[0] - 0.5, losses  # every block is 256 tokens: positions 64-255 are trained
    original, extended = AutoConfig.from_pretrained(short_model), AutoConfig.from_pretrained(out)
    assert extended.max_position_embeddings == 4 * OLD_CONTEXT
    assert extended.rope_parameters == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings":
                                        OLD_CONTEXT, "rope_theta": original.rope_parameters["rope_theta"]}

    # a 150-token prompt + 20 new tokens: past the old context, within the new one
    prompt, params = _prompt_of(150), SamplingParams(max_tokens=20, temperature=0)
    engine = load_engine(load_target_config("serve", short_model, []), need_chat_template=False)
    try:
        with pytest.raises(RequestError, match="context is 64 tokens"):
            engine.submit(prompt, params, lambda event: None)
    finally:
        engine.close()
    engine = load_engine(load_target_config("serve", str(out), []), need_chat_template=False)
    events: queue.Queue = queue.Queue()
    try:
        engine.submit(prompt, params, events.put)
        while not (last := events.get(timeout=120)).finish_reason:
            pass
    finally:
        engine.close()
    assert last.error is None and last.finish_reason in ("length", "stop") and 1 <= last.completion_tokens <= 20


def test_the_gguf_of_an_extended_model_carries_yarn(short_model, tmp_path):
    import gguf

    out = tmp_path / "export"
    assert main(["export", short_model, f"export_dir={out}", "export_gguf=true", "gguf_outtype=f32",
                 "rope_scaling.rope_type=yarn", "rope_scaling.factor=4"]) == 0
    fields = {k: f.contents() for k, f in gguf.GGUFReader(next(out.glob("*.gguf"))).fields.items()}
    assert fields["qwen2.context_length"] == 4 * OLD_CONTEXT
    assert (fields["qwen2.rope.scaling.type"], fields["qwen2.rope.scaling.factor"],
            fields["qwen2.rope.scaling.original_context_length"]) == ("yarn", 4.0, OLD_CONTEXT)


def test_a_rope_scaling_the_architecture_cannot_take_is_a_config_error(short_model, tmp_path, capsys):
    code = main(["train", "stage=pt", f"model_name_or_path={short_model}", "dataset=lmforge_quickstart",
                 "rope_scaling.rope_type=yarn", f"output_dir={tmp_path / 'x'}", "max_steps=1", "report_to=none"])
    err = capsys.readouterr().err
    assert code == 2 and "rope_scaling" in err and "factor" in err and "Traceback" not in err, err
