"""The web UI's parts without a browser: what the pickers offer (from real registries and real checkpoints), how runs
are found and what state each is in, a run's config copied back into the form, the preview's HTML, and the language
files (complete, and every text the page shows translated)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from lmforge import runstatus
from lmforge.serve.webui import i18n
from lmforge.serve.webui.catalog import dataset_choices, linear_module_names, model_defaults, model_info
from lmforge.serve.webui.runs import evaluations, exported_files, find_runs, headline, overlay, read_run
from tests.conftest import LF_DEMO

CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def test_the_dataset_picker_lists_a_registry_with_formats_and_row_counts(tmp_path):
    choices = {c.name: c for c in dataset_choices(str(LF_DEMO))}
    registry = json.load(open(LF_DEMO / "dataset_info.json"))
    assert list(choices)[: len(registry)] == list(registry)  # the registry's order first
    identity = choices["identity"]
    assert (identity.format, identity.rows) == ("alpaca", len(json.load(open(LF_DEMO / "identity.json"))))
    assert choices["glaive_toolcall_en_demo"].format == "sharegpt"
    assert choices["alpaca_en"].hub == "llamafactory/alpaca_en" and choices["alpaca_en"].rows is None
    ranked = [name for name, entry in registry.items() if entry.get("ranking") and entry.get("file_name")]
    assert ranked and all(choices[name].format.endswith("preference") for name in ranked)
    assert choices["lmforge_sft_quickstart"].where.endswith("dataset_info.json")  # lmforge's own, after the user's

    (tmp_path / "notes.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n')
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json", "num_samples": 1}}))
    (tmp_path / "mine.json").write_text(json.dumps([{"instruction": "q", "output": "a"}] * 3))
    local = {c.name: c for c in dataset_choices(str(tmp_path))}
    assert local["mine"].rows == 1  # num_samples caps what is used
    assert local[str(tmp_path / "notes.jsonl")].rows == 2 and local[str(tmp_path / "notes.jsonl")].format == \
        "json file"


@pytest.mark.slow  # the adapter fixture trains
def test_a_real_checkpoint_fills_the_template_and_names_the_modules_lora_reaches(real_model, greeter_adapter_dir,
                                                                                 tiny_model_dir):
    path = real_model("qwen3")
    info = model_info(path)
    assert (info.kind, info.model_type, info.architecture) == ("model", "qwen3", "Qwen3ForCausalLM")
    assert info.has_chat_template and model_defaults(path) == {"model_name_or_path": path, "template": "",
                                                               "lora_target": "all"}
    assert set(info.linear_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert model_defaults(tiny_model_dir)["template"] == "chatml"  # a tokenizer without a template
    adapter = model_info(greeter_adapter_dir)
    assert adapter.kind == "adapter" and model_defaults(greeter_adapter_dir)["adapter_name_or_path"] == \
        greeter_adapter_dir
    assert model_defaults(greeter_adapter_dir)["model_name_or_path"] == adapter.base
    assert model_info("Qwen/Qwen3-0.6B").kind == "" and model_defaults("Qwen/Qwen3-0.6B") == {}
    # norms (1-D) and the embedding / output layers (outside the numbered layers) are not LoRA targets
    assert linear_module_names(["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                                "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.experts.3.w1.weight",
                                "lm_head.weight"]) == ("q_proj", "w1")


def _fake_run(path, status=None, log=(), checkpoints=(), final=False, **config):
    os.makedirs(path, exist_ok=True)
    (path / "lmforge_config.yaml").write_text(yaml.safe_dump({"stage": "sft", "dataset": "identity", **config}))
    (path / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    for step in checkpoints:
        os.makedirs(path / f"checkpoint-{step}")
        (path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    if status is not None:
        (path / "run_status.json").write_text(json.dumps(status))
    if final:
        (path / "config.json").write_text("{}")
    return path


def test_runs_are_found_with_their_state_whoever_started_them(tmp_path):
    root = tmp_path / "saves"
    now = time.time()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _fake_run(root / "qwen" / "lora" / "done", {"status": "finished", "started": now - 90, "ended": now - 30},
                  [{"step": 5, "loss": 2.5}, {"step": 10, "loss": 1.25}], final=True, max_steps=10)
        _fake_run(root / "going", {"status": "running", "pid": sleeper.pid, "started": now - 5})
        _fake_run(root / "killed", {"status": "running", "pid": 2 ** 22 + 7, "started": now - 50},
                  checkpoints=[10, 20])
        _fake_run(root / "stopped", {"status": "stopped", "started": now - 40}, checkpoints=[5])
        old = _fake_run(root / "old", None, [{"step": 1, "loss": 3.0}], checkpoints=[1])  # before status records
        os.utime(old / "lmforge_config.yaml", (now - 3600, now - 3600))  # its start: when its config was written
        os.makedirs(root / "not-a-run" / "deeper")
        runs = {os.path.relpath(r.path, root): r for r in find_runs(str(root))}
        assert set(runs) == {"qwen/lora/done", "going", "killed", "stopped", "old"}
        assert runs["qwen/lora/done"].status == "finished" and runs["qwen/lora/done"].final_loss == 1.25
        assert runs["qwen/lora/done"].duration == pytest.approx(60) and runs["qwen/lora/done"].step == 10
        assert runs["going"].status == "running" and not runs["going"].resumable
        assert runs["killed"].status == "failed" and "ended without finishing" in runs["killed"].error
        assert runs["killed"].resumable and runs["killed"].checkpoints == [10, 20]
        assert runs["stopped"].resumable and runs["old"].status == "stopped"
        assert list(runs)[0] == "going"  # newest first
        # its PID is not an lmforge process (a PID reused after a run ended): Stop sends it nothing
        from lmforge.serve.webui.jobs import stop_run

        assert not stop_run(str(root / "going")) and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert read_run(str(root / "going")).status == "failed"  # its process is gone now


@pytest.mark.slow
def test_a_cli_run_records_its_status_and_log(tmp_path):
    from lmforge.cli import main
    from tests.conftest import scratch_args

    out = tmp_path / "run"
    assert main(["train", *scratch_args(out, max_steps=4, save_steps=2)]) == 0
    run = read_run(str(out))
    assert (run.status, run.stage, run.step, run.checkpoints) == ("finished", "pt", 4, [2, 4])
    status = runstatus.read_status_file(str(out))
    assert status["pid"] == os.getpid() and status["ended"] >= status["started"]
    assert "Model: new qwen2 model" in (out / "train.log").read_text()
    # a failure is recorded with its error; the next run in the folder clears it
    assert main(["train", *scratch_args(out, max_steps=8, save_steps=2), "resume_from_checkpoint=true",
                 "dataset=/nonexistent/corpus.txt"]) == 2
    assert read_run(str(out)).status == "failed" and "corpus.txt" in read_run(str(out)).error


def test_transformers_names_checkpoints_as_the_runs_tab_reads_them():
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    assert runstatus.CHECKPOINT_PREFIX == PREFIX_CHECKPOINT_DIR


def test_a_runs_page_lists_its_evaluations_exports_and_curves(tmp_path):
    run = _fake_run(tmp_path / "r", log=[{"step": 2, "loss": 2.0, "learning_rate": 1e-3},
                                         {"step": 4, "loss": 1.0, "eval_loss": 1.5}])
    os.makedirs(run / "eval_cmmlu")
    (run / "eval_cmmlu" / "results.json").write_text(json.dumps({"task": "cmmlu", "average": 41.25, "questions": 80,
                                                                "seconds": 3.5, "config": {}}))
    os.makedirs(run / "eval_perplexity")
    (run / "eval_perplexity" / "results.json").write_text(json.dumps({"task": "perplexity", "perplexity": 12.3456,
                                                                     "tokens": 900}))
    os.makedirs(tmp_path / "r-export" / "gguf")  # beside the run (an export may not lie inside its model)
    (tmp_path / "r-export" / "model.safetensors").write_bytes(b"x" * 300)
    (tmp_path / "r-export" / "gguf" / "model-f16.gguf").write_bytes(b"y" * 20)
    os.makedirs(tmp_path / "rx-export")  # another run's
    (tmp_path / "rx-export" / "model.safetensors").write_bytes(b"z")
    found = evaluations(str(run))
    assert found == [{"where": "eval_cmmlu", "task": "cmmlu", "scores": {"average": 41.25}},
                     {"where": "eval_perplexity", "task": "perplexity", "scores": {"perplexity": 12.3456,
                                                                                    "tokens": 900}}]
    assert [headline(e) for e in found] == ["cmmlu 41.25", "perplexity 12.35"]  # beside the run in the table
    assert exported_files(str(run)) == [("r-export/model.safetensors", 300), ("r-export/gguf/model-f16.gguf", 20)]
    os.makedirs(run / "eval_broken")  # one bad file never hides the rest
    (run / "eval_broken" / "results.json").write_text("[1, 2]")
    os.symlink(tmp_path / "nowhere", tmp_path / "r-export" / "dangling.bin")
    assert [e["where"] for e in evaluations(str(run))] == ["eval_cmmlu", "eval_perplexity"]
    assert ("r-export/dangling.bin", 0) in exported_files(str(run))
    other = _fake_run(tmp_path / "s", log=[{"step": 2, "loss": 3.0}])
    assert overlay([str(run), str(other)], "loss", {str(run): "r", str(other): "s"}) == [
        {"step": 2, "value": 2.0, "run": "r"}, {"step": 4, "value": 1.0, "run": "r"}, {"step": 2, "value": 3.0,
                                                                                     "run": "s"}]


def test_a_copied_config_fills_the_form_and_keeps_the_rest(tmp_path):
    from lmforge.serve.webui.train_tab import config_into_form

    run = _fake_run(tmp_path / "r", model_name_or_path="/m", dataset="identity,alpaca_en_demo", lora_rank=16,
                    neftune_noise_alpha=5, resume_from_checkpoint=True, output_dir=str(tmp_path / "r"),
                    rope_scaling={"type": "linear", "factor": 2.0})
    form, extra = config_into_form(read_run(str(run)).config, str(tmp_path))
    assert form["dataset"] == ["identity", "alpaca_en_demo"] and form["lora_rank"] == 16
    assert form["neftune_noise_alpha"] == 5  # a "More settings" field
    assert form["output_dir"] != str(tmp_path / "r") and form["output_dir"].startswith(str(tmp_path))
    assert yaml.safe_load(extra) == {"rope_scaling": {"type": "linear", "factor": 2.0}}  # no field: extra YAML


def test_the_preview_panel_highlights_exactly_the_trained_text():
    from lmforge.serve.webui.train_tab import render_preview

    summary = {"examples": [{"example": 0, "sequence": "", "source": "identity", "record": 4, "kto_label": None,
                             "tokens": 9, "trained_tokens": 3,
                             "segments": [["context", "<user>hi <b>"], ["trained", "Hello!"]]}],
               "stats": {"examples": 1, "tokens": 9, "packing_efficiency": 0.5}, "skips": [
                   {"source": "identity", "reason": "no assistant reply", "count": 2}]}
    page = render_preview("en", summary)
    assert "<span class='lmf-context'>&lt;user&gt;hi &lt;b&gt;</span><span class='lmf-trained'>Hello!</span>" in page
    assert "Example 0 (identity record 4): 9 tokens, 3 trained" in page
    assert "2 × no assistant reply (identity)" in page
    chinese = render_preview("zh-CN", summary)
    assert "样例 0" in chinese and "打包效率" in chinese
    assert render_preview("en", "Config error: x").count("Config error: x") == 1


@pytest.fixture(scope="module")
def page_texts():
    """The texts the web UI shows, by language: its ui ids and config keys, as registered while building it."""
    from lmforge.serve.webui import build_webui

    page = build_webui().lmforge_page
    return page.loc.ui_keys(), page.loc.config_keys()


ALLOWED_LATIN = {"LoRA", "GGUF", "GPU", "Hub", "ID", "YAML", "SIGTERM", "lmforge", "vLLM", "GB", "GiB", "API"}


def test_every_language_file_translates_every_text_the_page_shows(page_texts):
    ui_keys, config_keys = page_texts
    tables = i18n._locales()
    assert {"en", "zh-CN"} <= set(tables)
    english = tables["en"]["ui"]
    assert ui_keys <= set(english)  # every id the page uses has its English text
    for lang, table in tables.items():
        missing = set(english) - set(table["ui"])
        assert not missing, f"{lang}.yaml lacks {sorted(missing)}"
        for key in config_keys:
            entry = table["config"].get(key) or {}
            assert entry.get("label"), f"{lang}.yaml: no label for config key {key}"
            assert lang == "en" or entry.get("help"), f"{lang}.yaml: no help for config key {key}"
        for key, text in english.items():  # placeholders are kept
            assert set(re.findall(r"{(\w+)}", text)) == set(re.findall(r"{(\w+)}", table["ui"][key])), (lang, key)
    chinese = tables["zh-CN"]
    for key, text in chinese["ui"].items():  # no English left: every text has Chinese, or is only a name
        latin = set(re.findall(r"[A-Za-z]{2,}", re.sub(r"`[^`]*`|{\w+}", "", text))) - ALLOWED_LATIN
        assert CJK.search(text) or not latin, (key, text)
    for key in config_keys:
        assert CJK.search(chinese["config"][key]["label"]) and CJK.search(chinese["config"][key]["help"]), key


def test_the_page_language_comes_from_the_address_then_the_browser():
    assert i18n.pick_language("zh-CN", "en-US,en;q=0.9") == "zh-CN"
    assert i18n.pick_language(None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh-CN"
    assert i18n.pick_language(None, "zh;q=0.9") == "zh-CN"
    assert i18n.pick_language("fr", "de-DE") == "en"
    assert i18n.tr("zh-CN", "train.progress", status="运行中", latest="", n=3) == "训练运行中 · 已记录 3 步"
    assert i18n.tr("xx", "train.start") == "Start training"  # a language without the text falls back to English
    assert i18n.brief("a" * 500).endswith(" …") and len(i18n.brief("a" * 500)) <= i18n.BRIEF + 2
