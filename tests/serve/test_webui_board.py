"""The web board in a real headless Chromium, driven as a person does: pick a registry dataset and a real checkpoint,
preview the data and see the trained spans, start a run, close the page and find the run again, compare it with a
run started on the command line, export it, stop and resume a run, copy a config back into the form, and switch the
page to Chinese. Each step leaves a screenshot in $LMFORGE_SCREENSHOTS (default: the test's temporary folder)."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from lmforge.serve.webui import i18n
from tests.conftest import LF_DEMO
from tests.serve.test_api import start_lmforge_server
from tests.serve.test_webui import CHROMIUM, needs_browser

pytestmark = [pytest.mark.slow, needs_browser]

IDENTITY = json.load(open(LF_DEMO / "identity.json"))


@pytest.fixture(scope="module")
def board(tmp_path_factory, real_model):
    """A web UI whose runs folder holds a run started on the command line, and the tiny real Qwen3 it trains."""
    from lmforge.cli import main

    model = real_model("qwen3")
    runs = tmp_path_factory.mktemp("board") / "saves"
    assert main(["train", "stage=sft", f"model_name_or_path={model}", "dataset=identity", f"dataset_dir={LF_DEMO}",
                 "finetuning_type=lora", "max_steps=12", "logging_steps=2", "learning_rate=0.01", "report_to=none",
                 "cutoff_len=128", f"output_dir={runs / 'cli-run'}", "disable_tqdm=true"]) == 0
    proc, base = start_lmforge_server("webui", f"runs_dir={runs}")
    yield base, runs, model
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture()
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


@pytest.fixture()
def shots(tmp_path):
    folder = os.environ.get("LMFORGE_SCREENSHOTS") or str(tmp_path / "screenshots")
    os.makedirs(folder, exist_ok=True)

    def take(page, name: str) -> None:
        page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)

    return take


def _open(browser, url: str):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    expect(page.locator("#train_progress")).not_to_be_empty(timeout=60_000)  # the page has loaded and re-attached
    return page


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Tab")


def _choose(page, elem_id: str, typed: str, option: re.Pattern) -> None:
    """Open a dropdown, type to filter it, and click the option (as a person picks from a list)."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(typed)
    choice = page.get_by_role("option", name=option).first
    choice.wait_for()
    time.sleep(0.3)  # the list settles as it filters
    choice.click()
    page.locator("#page_title").click()  # a click elsewhere closes the list
    time.sleep(0.3)


def _wait_for(locator, pattern: str, seconds: float = 240) -> str:
    deadline = time.time() + seconds
    text = ""
    while time.time() < deadline:
        text = locator.inner_text()
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} did not appear in {text!r}")


def _table(page) -> list[list[str]]:
    """The Runs table's data rows (cell texts)."""
    rows = page.locator("#runs_table tbody tr")
    return [[c.strip() for c in rows.nth(i).locator("td").all_inner_texts()] for i in range(rows.count())]


def test_pick_preview_train_reopen_compare_and_export(board, browser, shots):
    from playwright.sync_api import expect

    base, runs, model = board
    page = _open(browser, base + "/")
    # pickers: a real checkpoint typed in fills its template and names the modules LoRA reaches
    _fill(page, "model_name_or_path", model)
    expect(page.locator("#model_card")).to_contain_text("qwen3", timeout=30_000)
    expect(page.locator("#model_card")).to_contain_text("the tokenizer's own is used")
    expect(page.locator("#model_card")).to_contain_text("q_proj")
    _fill(page, "dataset_dir", str(LF_DEMO))
    _choose(page, "dataset", "identity", re.compile(rf"^identity · alpaca · {len(IDENTITY)} rows$"))
    _choose(page, "finetuning_type", "lora", re.compile("^lora$"))
    for key, value in (("max_steps", "16"), ("logging_steps", "2"), ("learning_rate", "0.01"), ("cutoff_len", "128"),
                       ("output_dir", str(runs / "ui-run"))):
        _fill(page, key, value)
    expect(page.locator("#config_check")).to_contain_text("The config is valid.", timeout=30_000)
    expect(page.locator("#yaml_preview")).to_contain_text("dataset: identity", timeout=30_000)

    # the data as the model will see it: the answers trained, the prompts and template dimmed
    page.locator("#preview_panel").get_by_text("Preview data (as the model will see it)").click()
    page.locator("#preview_data").click()
    trained = page.locator("#data_preview .lmf-trained")
    expect(trained.first).to_be_visible(timeout=180_000)
    shown = " ".join(trained.all_inner_texts())
    assert all(record["output"] in shown for record in IDENTITY[:3])  # the first three examples' answers
    assert "<|im_start|>user" in " ".join(page.locator("#data_preview .lmf-context").all_inner_texts())
    assert "<|im_start|>user" not in shown
    expect(page.locator("#data_preview .lmf-stats")).to_contain_text(f"examples{len(IDENTITY)}")
    expect(page.locator("#data_preview .lmf-stats")).to_contain_text("packing efficiency")
    shots(page, "1-preview")

    page.locator("#start_training").click()
    _wait_for(page.locator("#train_progress"), r"Run running · step \d+")
    shots(page, "2-training")
    page.close()  # the run goes on without the page

    page = _open(browser, base + "/")  # reopened: it re-attaches to the run
    final = _wait_for(page.locator("#train_progress"), r"Run (finished|failed)")
    assert "Run finished" in final and "8 logged steps" in final, page.locator("#train_log textarea").input_value()

    page.get_by_role("tab", name="Runs").click()
    _wait_for(page.locator("#runs_table"), r"ui-run\s+finished")
    rows = {row[0]: row for row in _table(page)}
    assert rows["ui-run"][1:6] == ["finished", "sft", model, "identity", "16/16"]
    assert rows["cli-run"][1:6] == ["finished", "sft", model, "identity", "12/12"]  # started on the command line
    _choose(page, "run_picked", "ui-run", re.compile("^ui-run$"))
    expect(page.locator("#run_details")).to_contain_text("finished", timeout=30_000)
    expect(page.locator("#run_config")).to_contain_text("max_steps: 16")
    expect(page.locator("#run_log textarea")).to_have_value(re.compile("Model:"))

    page.get_by_role("tab", name="Compare").click()
    _choose(page, "compare_runs", "ui-run", re.compile("^ui-run$"))
    _choose(page, "compare_runs", "cli-run", re.compile("^cli-run$"))
    plot = page.locator("#compare_plot")
    expect(plot).to_contain_text("ui-run", timeout=30_000)  # the legend names both runs
    expect(plot).to_contain_text("cli-run")
    shots(page, "3-compare")

    page.get_by_role("tab", name="Export").click()
    _choose(page, "export_model", "ui-run", re.compile(r"^ui-run · sft · LoRA on "))
    expect(page.locator("#export_export_dir input, #export_export_dir textarea").first).to_have_value(
        str(runs / "ui-run-export"))
    assert page.locator("#export_adapter input, #export_adapter textarea").first.input_value() == str(runs / "ui-run")
    page.locator("#export_run").click()
    done = _wait_for(page.locator("#export_status"), r"export: (finished|failed)")
    assert "finished" in done, page.locator("#export_output textarea").input_value()
    expect(page.locator("#export_output textarea")).to_have_value(re.compile(r"model\.safetensors"))
    shots(page, "4-export")

    # evaluated from the same picker: the score lands beside the run
    page.get_by_role("tab", name="Evaluate").click()
    _choose(page, "eval_model", "ui-run", re.compile(r"^ui-run · sft · LoRA on "))
    _choose(page, "eval_task", "perplexity", re.compile("^perplexity$"))
    for key, value in (("dataset", "lmforge_quickstart"), ("max_samples", "8")):  # lmforge's own text corpus
        _fill(page, f"eval_{key}", value)
    expect(page.locator("#eval_output_dir input, #eval_output_dir textarea").first).to_have_value(
        str(runs / "ui-run" / "eval_perplexity"))
    page.locator("#eval_run").click()
    done = _wait_for(page.locator("#eval_status"), r"eval: (finished|failed)")
    assert "finished" in done, page.locator("#eval_output textarea").input_value()
    result = json.load(open(runs / "ui-run" / "eval_perplexity" / "results.json"))

    page.get_by_role("tab", name="Runs").click()
    row = _wait_for(page.locator("#runs_table"), r"ui-run\s.*perplexity")
    assert f"perplexity {result['perplexity']:.4g}" in row
    _choose(page, "run_picked", "cli-run", re.compile("^cli-run$"))  # away and back: the page is read again
    _choose(page, "run_picked", "ui-run", re.compile("^ui-run$"))
    page.get_by_role("tab", name="Run", exact=True).click()
    expect(page.locator("#run_exports")).to_contain_text("ui-run-export/model.safetensors", timeout=30_000)
    expect(page.locator("#run_evals")).to_contain_text("eval_perplexity")
    assert os.path.isfile(runs / "ui-run-export" / "model.safetensors")
    shots(page, "5-run-page")


def test_stop_resume_and_copy_a_config_back(board, browser, shots):
    from playwright.sync_api import expect

    base, runs, model = board
    page = _open(browser, base + "/")
    # a config file of the project's own loads into the form: fields (the "More settings" ones too) and extra keys
    _fill(page, "load_config_path", "examples/sft_quickstart.yaml")
    page.locator("#load_config").click()
    expect(page.locator("#load_message")).to_contain_text("Loaded examples/sft_quickstart.yaml", timeout=30_000)
    expect(page.locator("#yaml_preview")).to_contain_text("lr_scheduler_type: cosine", timeout=30_000)
    page.locator("#more_settings").get_by_text("More settings").click()
    expect(page.locator("#lr_scheduler_type input").first).to_have_value("cosine")
    expect(page.locator("#dataset")).to_contain_text("lmforge_sft_quickstart")
    expect(page.locator("#extra_yaml")).to_contain_text("eval_dataset: lmforge_sft_quickstart_heldout")

    page.get_by_role("tab", name="Runs").click()
    _wait_for(page.locator("#runs_table"), "cli-run")
    _choose(page, "run_picked", "cli-run", re.compile("^cli-run$"))
    page.locator("#run_copy").click()  # into the Train form, with a new output folder
    expect(page.locator("#model_name_or_path input").first).to_have_value(model, timeout=30_000)
    output_dir = page.locator("#output_dir input, #output_dir textarea").first.input_value()
    assert output_dir.startswith(str(runs)) and output_dir != str(runs / "cli-run")
    expect(page.locator("#yaml_preview")).to_contain_text("max_steps: 12", timeout=30_000)
    expect(page.locator("#config_check")).to_contain_text("The config is valid.", timeout=30_000)

    _fill(page, "max_steps", "400")  # long enough to be stopped, saving every 4 steps
    _fill(page, "save_steps", "4")
    _fill(page, "output_dir", str(runs / "long-run"))
    expect(page.locator("#yaml_preview")).to_contain_text("max_steps: 400", timeout=30_000)
    page.locator("#start_training").click()
    deadline = time.time() + 240
    while not any(n.startswith("checkpoint-") for n in os.listdir(runs / "long-run")) if \
            (runs / "long-run").is_dir() else True:
        assert time.time() < deadline, "no checkpoint was written"
        time.sleep(0.5)
    page.get_by_role("tab", name="Runs").click()
    _wait_for(page.locator("#runs_table"), "long-run")
    _choose(page, "run_picked", "long-run", re.compile("^long-run$"))
    page.locator("#run_stop").click()
    expect(page.locator("#run_message")).to_contain_text("Stop sent", timeout=30_000)
    _wait_for(page.locator("#run_details"), "stopped", 240)
    assert json.load(open(runs / "long-run" / "run_status.json"))["status"] == "stopped"
    first_stop = newest_checkpoint(runs / "long-run")
    shots(page, "6-stopped")

    page.locator("#run_resume").click()
    expect(page.locator("#run_message")).to_contain_text("Resumed from the checkpoint of step", timeout=30_000)
    _wait_for(page.locator("#run_details"), "running", 120)
    deadline = time.time() + 240
    while max(logged_steps(runs / "long-run"), default=0) <= first_stop:  # it trains on from its checkpoint
        assert time.time() < deadline, "the resumed run logged no new step"
        time.sleep(0.5)
    page.locator("#run_stop").click()  # and is stopped again
    _wait_for(page.locator("#run_details"), "stopped", 240)
    steps = logged_steps(runs / "long-run")
    assert steps == sorted(set(steps)) and newest_checkpoint(runs / "long-run") > first_stop  # one log, no repeats


def logged_steps(folder) -> list[int]:
    from lmforge.runlog import read_log

    return [r["step"] for r in read_log(str(folder), while_written=True) if "loss" in r]


def newest_checkpoint(folder) -> int:
    return max(int(n.split("-")[1]) for n in os.listdir(folder) if n.startswith("checkpoint-"))


def test_the_page_in_chinese_has_no_english_left(board, browser, shots):
    from playwright.sync_api import expect

    base, _, _ = board
    page = _open(browser, base + "/")
    _choose(page, "language", "简体", re.compile("^简体中文$"))
    expect(page.get_by_role("tab", name="训练记录")).to_be_visible(timeout=30_000)
    assert "lang=zh-CN" in page.url  # a reload keeps the language
    english = i18n._locales()["en"]["ui"]
    chinese = i18n._locales()["zh-CN"]["ui"]
    english_texts = {text for key, text in english.items() if text != chinese[key] and "{" not in text}
    english_texts |= {i18n.config_label("en", key) for key in page_keys()}
    english_texts |= {i18n.brief(i18n.config_help("en", key)) for key in page_keys()}
    for tab in ("训练", "训练记录", "评测", "对话", "导出"):
        page.get_by_role("tab", name=tab, exact=True).click()
        time.sleep(1.5)
        left = sorted(english_texts & _visible_texts(page))
        assert not left, (tab, left)
        shots(page, f"7-zh-{tab}")
    page.reload()  # the address keeps the language
    expect(page.get_by_role("tab", name="训练记录")).to_be_visible(timeout=60_000)
    # the server's texts too: the progress of the run the page started earlier (or that none was)
    expect(page.locator("#train_progress")).to_contain_text(re.compile("训练已完成|尚未开始训练"), timeout=30_000)


def _visible_texts(page) -> set[str]:
    """The text of every visible element's own text nodes (a label, a button, a tab, a heading, a help line), not
    the data the page shows (a config's YAML, a log, a table's cells)."""
    return set(page.evaluate("""() => {
        const out = [];
        for (const el of document.querySelectorAll('body *')) {
            if (!el.checkVisibility || !el.checkVisibility() || el.closest('.cm-editor, pre, td')) continue;
            const own = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
            if (own) out.push(own);
        }
        return out;
    }"""))


def page_keys() -> set[str]:
    from lmforge.serve.webui import build_webui

    return build_webui().lmforge_page.loc.config_keys()
