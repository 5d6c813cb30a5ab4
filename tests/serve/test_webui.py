"""`lmforge webui` in a real headless Chromium (Playwright): build a config and see it previewed, start a tiny run,
watch the loss plot fill in; chat on the same page. Skipped where no Chromium is installed (CI installs one)."""

from __future__ import annotations

import os
import re
import shutil
import time

import httpx
import pytest

from lmforge.serve.webui.jobs import config_values, plan, preview, read_progress, start_training
from tests.conftest import GREETING, LF_DEMO, REPLY
from tests.serve.test_api import start_lmforge_server

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them

CHROMIUM = os.environ.get("LMFORGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Skipped on a developer's machine without Chromium; in CI (which installs it) a missing browser fails the test.
needs_browser = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                   reason="no Chromium installed (CI installs Debian's chromium)")


def test_an_exposed_page_needs_a_password(monkeypatch):
    from lmforge.errors import ConfigError
    from lmforge.serve.webui import page_credentials

    monkeypatch.delenv("LMFORGE_WEBUI_AUTH", raising=False)
    assert page_credentials("127.0.0.1", False, None) is None
    for host, share in (("0.0.0.0", False), ("192.0.2.1", False), ("127.0.0.1", True)):
        with pytest.raises(ConfigError, match="without a password"):
            page_credentials(host, share, None)
    assert page_credentials("0.0.0.0", True, "ann:s3cret") == ("ann", "s3cret")
    with pytest.raises(ConfigError, match="must be `user:password`"):
        page_credentials("0.0.0.0", False, "ann")
    monkeypatch.setenv("LMFORGE_WEBUI_AUTH", "bob:pw:with:colons")
    assert page_credentials("0.0.0.0", False, None) == ("bob", "pw:with:colons")


def test_webui_on_all_interfaces_without_a_password_exits_2(monkeypatch, capsys):
    from lmforge.cli import main

    monkeypatch.delenv("LMFORGE_WEBUI_AUTH", raising=False)
    assert main(["webui", "host=0.0.0.0"]) == 2
    assert "webui_auth" in capsys.readouterr().err


def test_a_password_protects_the_page(greeter_dir):
    import httpx

    proc, base = start_lmforge_server("webchat", greeter_dir, "webui_auth=ann:s3cret")
    try:
        assert httpx.get(base + "/config", timeout=10).status_code == 401
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.post("/login", data={"username": "ann", "password": "wrong"}).status_code == 400
            assert client.post("/login", data={"username": "ann", "password": "s3cret"}).status_code == 200
            assert client.get("/config").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_form_values_become_a_minimal_validated_config(tmp_path, tiny_model_dir):
    form = {"stage": "sft", "model_name_or_path": tiny_model_dir, "template": "", "dataset": "identity",
            "learning_rate": 5e-5, "max_steps": 20.0, "packing": False, "output_dir": str(tmp_path / "run")}
    values = config_values(form, "report_to: none\ntemplate: chatml")
    assert values == {"stage": "sft", "model_name_or_path": tiny_model_dir, "dataset": "identity", "max_steps": 20,
                      "output_dir": str(tmp_path / "run"), "report_to": "none", "template": "chatml"}
    text, command, verdict = preview(form, f"dataset_dir: {LF_DEMO}\ntemplate: chatml")
    assert "max_steps: 20" in text and command == f"lmforge train {tmp_path / 'run' / 'webui_config.yaml'}"
    assert verdict == "The config is valid."
    _, _, verdict = preview({**form, "stage": "sft", "cutoff_len": -3.0}, "")
    assert "cutoff_len" in verdict
    assert preview(form, "- not a mapping")[2].startswith("Extra keys:")


def test_a_started_run_gets_its_secrets_from_the_environment_not_from_disk(tmp_path):
    from lmforge.config import parse_overrides
    from tests.conftest import scratch_args

    values = parse_overrides(scratch_args(tmp_path / "run", max_steps=2, save_steps=2))
    values["hub_token"] = "hf_webuiSecret42"
    job = start_training(values)
    assert job.process.wait(timeout=300) == 0, job.output()
    saved = (tmp_path / "run" / "webui_config.yaml").read_text()
    assert "hub_token: '***'" in saved and "hf_webuiSecret42" not in saved
    assert job.secrets == {"hub_token": "hf_webuiSecret42"}
    for root, _, files in os.walk(tmp_path / "run"):
        for name in files:
            assert b"hf_webuiSecret42" not in open(os.path.join(root, name), "rb").read(), name


def test_the_plan_button_shows_what_lmforge_plan_prints(tmp_path, tiny_model_dir):
    """The text `lmforge plan` prints, or its one-line error (the browser test below clicks the button)."""
    values = {"stage": "sft", "model_name_or_path": tiny_model_dir, "dataset": "identity", "dataset_dir": str(LF_DEMO),
              "template": "chatml", "cutoff_len": 64, "output_dir": str(tmp_path / "run")}
    text = plan(values, "1xRTX-4090")
    assert text.startswith("Plan: sft of ") and "on 1 x RTX-4090 (23.5 GiB each)" in text
    assert "Per device, at the peak:" in text and "Fits: yes" in text
    assert plan(values, "2xZ9000").startswith("Config error: unknown GPU 'Z9000'")
    assert not os.path.exists(tmp_path / "run")  # planning writes nothing


def test_progress_is_read_while_a_line_is_being_written(tmp_path):
    (tmp_path / "trainer_log.jsonl").write_text('{"step": 2, "loss": 3.0}\n{"step": 4, "lo')
    assert read_progress(str(tmp_path)) == [{"step": 2, "loss": 3.0}]


@pytest.fixture()
def webui():
    proc, base = start_lmforge_server("webui")
    yield base + "/"
    proc.terminate()
    proc.wait(timeout=30)


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Tab")


@needs_browser
def test_build_a_config_run_it_and_watch_the_loss_plot(webui, tmp_path, chat_model_dir, greeter_dir):
    from playwright.sync_api import expect, sync_playwright

    output_dir = tmp_path / "webui-run"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(webui)
        _fill(page, "model_name_or_path", chat_model_dir)
        _fill(page, "dataset_dir", str(LF_DEMO))
        page.locator("#dataset input").first.click()
        page.keyboard.type("identity")
        page.get_by_role("option", name=re.compile("^identity ·")).click()
        page.keyboard.press("Escape")
        _fill(page, "cutoff_len", "128")
        _fill(page, "max_steps", "30")
        _fill(page, "logging_steps", "2")
        _fill(page, "output_dir", str(output_dir))
        extra = page.locator("#extra_yaml .cm-content")
        extra.click()
        page.keyboard.type("report_to: none\nlearning_rate: 0.005\nper_device_train_batch_size: 4\n")
        preview_box = page.locator("#yaml_preview")
        expect(preview_box).to_contain_text("max_steps: 30", timeout=30_000)
        expect(preview_box).to_contain_text("learning_rate: 0.005")
        expect(page.locator("#command_preview textarea, #command_preview input").first).to_have_value(
            f"lmforge train {output_dir / 'webui_config.yaml'}")
        expect(page.locator("#config_check")).to_contain_text("The config is valid.")
        page.locator("#plan_run").click()  # will it fit? on the default 1 x RTX-4090
        expect(page.locator("#plan_output textarea")).to_have_value(re.compile(r"Fits: yes"), timeout=120_000)
        # its verdict, peak and speed beside the Start button
        expect(page.locator("#plan_estimate textarea")).to_have_value(re.compile(r"total .* GiB.*\nFits: yes.*\n"
                                                                                 r"Speed: "))

        page.locator("#start_training").click()
        progress = page.locator("#train_progress")
        seen, plots = set(), set()
        deadline = time.time() + 240
        while time.time() < deadline:
            text = progress.inner_text()
            seen.add(text)
            plots.add(page.locator("#loss_plot").inner_html())
            if "Run finished" in text or "failed" in text:
                break
            time.sleep(0.25)
        time.sleep(1.5)  # the last tick
        final = progress.inner_text()
        assert "Run finished" in final, (final, page.locator("#train_log textarea").input_value())
        assert "15 logged steps" in final
        assert len({s for s in seen if "logged steps" in s}) >= 2  # the progress moved while we watched
        assert len(plots) >= 2  # and so did the plot
        assert page.locator("#loss_plot canvas, #loss_plot svg").count() > 0
        assert len(read_progress(str(output_dir))) >= 15

        page.get_by_role("tab", name="Chat").click()
        _fill(page, "chat_model", greeter_dir)
        temperature = page.locator("#chat_temperature input[type=number]")
        temperature.fill("0")
        temperature.press("Tab")
        message = page.locator("#chat_message textarea").first
        message.fill(GREETING)
        message.press("Enter")
        expect(page.locator("#chatbot")).to_contain_text(REPLY, timeout=60_000)
        browser.close()


def test_the_loopback_page_refuses_other_host_names(webui):
    """A page elsewhere that points its own name at 127.0.0.1 (DNS rebinding) cannot reach the web UI, which starts
    training runs: only loopback names are answered."""
    assert httpx.get(webui).status_code == 200
    assert httpx.get(webui, headers={"Host": "rebound.attacker.example:7860"}).status_code == 403
    assert httpx.post(webui.rstrip("/") + "/gradio_api/queue/join", json={},
                      headers={"Origin": "http://attacker.example"}).status_code == 403
