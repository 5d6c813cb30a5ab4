"""The Train tab: a config from pickers and fields, its data previewed as the model will see it, its memory planned,
then the run started and watched (and found again when the page is reopened)."""

from __future__ import annotations

import html
import shlex
from typing import Any

from lmforge.serve.webui.catalog import (
    DatasetChoice,
    dataset_choices,
    model_defaults,
    model_info,
    template_choices,
)
from lmforge.serve.webui.i18n import config_texts, tr
from lmforge.serve.webui.jobs import config_values, data_preview, plan, preview, read_progress, start_training
from lmforge.serve.webui.page import Page, job_state, model_choices, new_run_dir

# The training form: key -> (kind, choices); labels and help come from the language files, values are checked by
# the config schema. Choices that come from a registry are read from the key itself (`stage`: every stage).
TRAIN_FORM: dict[str, tuple[str, list[str] | None]] = {
    "stage": ("choice", None),
    "model_name_or_path": ("model", None),
    "adapter_name_or_path": ("text", None),
    "finetuning_type": ("choice", ["lora", "full", "freeze"]),
    "template": ("template", None),
    "dataset_dir": ("text", None),
    "dataset": ("dataset", None),
    "cutoff_len": ("number", None),
    "learning_rate": ("number", None),
    "num_train_epochs": ("number", None),
    "max_steps": ("number", None),
    "per_device_train_batch_size": ("number", None),
    "gradient_accumulation_steps": ("number", None),
    "lora_rank": ("number", None),
    "lora_target": ("text", None),
    "packing": ("bool", None),
    "logging_steps": ("number", None),
    "save_steps": ("number", None),
    "output_dir": ("text", None),
}
UI_DEFAULTS = {"stage": "sft", "dataset_dir": "data"}  # what most come to the page for; the CLI's default stays pt
VALID = "The config is valid."  # what `preview` says of a valid config
PAGE_CSS = """
.lmf-preview pre { white-space: pre-wrap; word-break: break-word; font-size: 13px; line-height: 1.5; }
.lmf-trained { background: #d1fadf; color: #05603a; font-weight: 600; border-radius: 2px; }
.lmf-context { color: #98a2b3; }
.lmf-media { color: #6941c6; font-style: italic; }
.lmf-stats td { padding: 0 12px 0 0; }
.lmf-runs { width: 100%; border-collapse: collapse; font-size: 14px; }
.lmf-runs th, .lmf-runs td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #eaecf0; }
.lmf-runs td[class^="lmf-status-"] { font-weight: 600; }
.lmf-status-running { color: #175cd3; } .lmf-status-finished { color: #067647; }
.lmf-status-stopped { color: #b54708; } .lmf-status-failed { color: #b42318; }
"""


def form_choices(key: str, listed: list[str] | None) -> list[str] | None:
    """The choices a form field offers: its own list, or the key's registry (`stage`)."""
    from lmforge.config.schema import key_index

    return listed if listed is not None else list(key_index("train")[key].choices or []) or None


def _default(key: str) -> Any:
    from lmforge.config.schema import key_index

    value = UI_DEFAULTS.get(key, key_index("train")[key].default)
    return value.value if hasattr(value, "value") else value


def _field(page: Page, key: str, kind: str, listed: list[str] | None):
    import gradio as gr

    texts, default, make = config_texts(key), _default(key), page.loc.make
    if kind == "choice":
        choices = form_choices(key, listed)
        return make(gr.Dropdown, texts, choices=choices, value=default if default in choices else choices[0],
                    elem_id=key)
    if kind == "model":  # saved runs, or anything typed (a folder, a hub id)
        return make(gr.Dropdown, texts, choices=[], value=default or None, allow_custom_value=True, elem_id=key)
    if kind == "template":  # "" is the tokenizer's own template
        return make(gr.Dropdown, texts, choices=["", *template_choices()], value=default or "",
                    allow_custom_value=True, elem_id=key)
    if kind == "dataset":
        return make(gr.Dropdown, texts, choices=[], value=[], multiselect=True, allow_custom_value=True,
                    elem_id=key)
    if kind == "bool":
        return make(gr.Checkbox, texts, value=bool(default), elem_id=key)
    if kind == "number":
        return make(gr.Number, texts, value=default, elem_id=key)
    return make(gr.Textbox, texts, value=default or "", elem_id=key)


def form_value(key: str, value: Any) -> Any:
    """A field's value as a config value (the dataset picker's list is the comma-separated `dataset`)."""
    if key == "dataset" and isinstance(value, list):
        return ",".join(v.strip() for v in value if v and v.strip())
    return value


def dataset_label(lang: str, choice: DatasetChoice) -> str:
    """name · format · rows (or the hub id it is downloaded from)."""
    where = tr(lang, "data.hub", id=choice.hub) if choice.hub else \
        tr(lang, "data.rows", n=f"{choice.rows:,}") if choice.rows is not None else tr(lang, "data.rows_unknown")
    return f"{choice.name} · {choice.format} · {where}"


def dataset_picker(lang: str, dataset_dir: str, selected: list[str] | None = None):
    import gradio as gr

    choices = [(dataset_label(lang, c), c.name) for c in dataset_choices(dataset_dir or "")]
    known = {value for _, value in choices}
    return gr.update(choices=choices + [(s, s) for s in selected or [] if s not in known])


def model_card(lang: str, path: str) -> str:
    """What the chosen model's files say: architecture, size, template and the modules LoRA reaches."""
    info = model_info(path or "")
    if not info.kind:
        return tr(lang, "train.model_hub") if path and "/" in path and not path.startswith((".", "/")) else ""
    parts = [f"**{info.model_type or '?'}** ({info.architecture or '?'})"]
    if info.layers:
        parts.append(tr(lang, "train.model_size", layers=info.layers, hidden=info.hidden_size or "?"))
    if info.kind == "adapter":
        parts.append(tr(lang, "train.model_adapter", base=info.base))
    parts.append(tr(lang, "train.template_own") if info.has_chat_template else tr(lang, "train.template_none"))
    if info.linear_modules:
        parts.append(tr(lang, "train.lora_reaches", modules=", ".join(info.linear_modules)))
    return " · ".join(parts)


def render_preview(lang: str, summary: dict[str, Any] | str) -> str:
    """The examples as the model will see them (trained tokens highlighted, the rest dimmed), the statistics and
    the skipped records with their reasons, as HTML."""
    def text(key: str, **values: Any) -> str:
        return html.escape(tr(lang, key, **values))

    if isinstance(summary, str):
        return f"<div class='lmf-preview'><b>{text('preview.failed')}</b> {html.escape(summary)}</div>"
    out = ["<div class='lmf-preview'>",
           f"<p>{text('preview.legend')} <span class='lmf-trained'>{text('preview.trained')}</span> "
           f"<span class='lmf-context'>{text('preview.context')}</span></p>"]
    for ex in summary["examples"]:
        where = tr(lang, "preview.where", source=ex["source"], record=ex["record"]) if ex["source"] is not None else ""
        side = f" {ex['sequence']}" if ex["sequence"] else ""
        title = tr(lang, "preview.example", n=ex["example"], side=side, where=where, tokens=ex["tokens"],
                   trained=ex["trained_tokens"])
        spans = "".join(f"<span class='lmf-{kind}'>{html.escape(text)}</span>" for kind, text in ex["segments"])
        out.append(f"<div class='lmf-example'><h4>{html.escape(title)}</h4><pre>{spans}</pre></div>")
    stats = summary["stats"]
    rows = "".join(f"<tr><td>{text('stat.' + k)}</td><td><b>{stats[k]}</b></td></tr>"
                   for k in ("examples", "sequences", "tokens", "trained_tokens", "length_mean", "length_p95",
                             "length_max", "truncated", "skipped", "packed_rows", "packing_efficiency") if k in stats)
    out.append(f"<h4>{text('preview.stats')}</h4><table class='lmf-stats'>{rows}</table>")
    if summary["skips"]:
        items = "".join(f"<li>{s['count']} × {html.escape(str(s['reason']))} ({html.escape(str(s['source']))})</li>"
                        for s in summary["skips"])
        out.append(f"<h4>{text('preview.skipped')}</h4><ul class='lmf-skips'>{items}</ul>")
    return "".join(out) + "</div>"


def plan_headline(text: str) -> str:
    """The lines of `lmforge plan` worth showing beside the Start button: whether it fits, the peak, the speed."""
    keep = [line.strip() for line in text.splitlines()
            if line.strip().startswith(("Fits", "Peak", "Per device", "Step time", "Throughput", "Estimated"))]
    return "\n".join(keep[:4]) or text.strip().splitlines()[-1] if text.strip() else ""


def progress_text(lang: str, job, records: list[dict]) -> str:
    if job is None:
        return tr(lang, "train.no_run")
    losses = [r for r in records if "loss" in r]
    latest = tr(lang, "train.latest", step=losses[-1]["step"], loss=f"{losses[-1]['loss']:.4f}") if losses else ""
    return tr(lang, "train.progress", status=job_state(lang, job), latest=latest, n=len(losses))


def loss_frame(records: list[dict]):
    import pandas as pd

    rows = [{"step": r["step"], "loss": r["loss"]} for r in records if "loss" in r and "step" in r]
    return pd.DataFrame(rows, columns=["step", "loss"])


def build(page: Page) -> None:
    import gradio as gr

    loc = page.loc
    fields = {}
    keys = list(TRAIN_FORM)
    with gr.Row():
        for key in keys[:5]:
            fields[key] = _field(page, key, *TRAIN_FORM[key])
    model_note = gr.Markdown(elem_id="model_card")
    with gr.Row():
        fields["dataset_dir"] = _field(page, "dataset_dir", *TRAIN_FORM["dataset_dir"])
        fields["dataset"] = _field(page, "dataset", *TRAIN_FORM["dataset"])
        refresh = loc.make(gr.Button, {"value": "train.refresh"}, elem_id="refresh_pickers", scale=0)
    rest = [k for k in keys if k not in fields]
    for start in range(0, len(rest), 4):
        with gr.Row():
            for key in rest[start: start + 4]:
                fields[key] = _field(page, key, *TRAIN_FORM[key])
    extra = loc.make(gr.Code, {"label": "train.extra"}, language="yaml", value="", elem_id="extra_yaml")
    page.train_form, page.train_extra = fields, extra

    with loc.make(gr.Accordion, {"label": "preview.title"}, open=False, elem_id="preview_panel"):
        with gr.Row():
            preview_num = loc.make(gr.Number, {"label": "preview.num"}, value=3, precision=0, elem_id="preview_num",
                                   scale=0)
            preview_button = loc.make(gr.Button, {"value": "preview.run"}, elem_id="preview_data", scale=0)
        preview_view = gr.HTML(elem_id="data_preview")

    with gr.Row():
        yaml_view = loc.make(gr.Code, {"label": "train.yaml"}, language="yaml", interactive=False,
                             elem_id="yaml_preview")
        with gr.Column():
            command = loc.make(gr.Textbox, {"label": "train.command"}, interactive=False, elem_id="command_preview")
            check = gr.Markdown(elem_id="config_check")
            with gr.Row():
                start_button = loc.make(gr.Button, {"value": "train.start"}, variant="primary",
                                        elem_id="start_training")
                stop_button = loc.make(gr.Button, {"value": "train.stop"}, elem_id="stop_training")
            estimate = loc.make(gr.Textbox, {"label": "plan.estimate"}, lines=3, interactive=False,
                                elem_id="plan_estimate")
    with gr.Row():  # will it fit? `lmforge plan` on the config as it stands
        gpus = loc.make(gr.Textbox, {"label": "plan.gpus", "info": "plan.gpus_info"}, value="1xRTX-4090",
                        elem_id="plan_gpus")
        gpu_memory = loc.make(gr.Textbox, {"label": "plan.memory", "info": "plan.memory_info"}, value="",
                              elem_id="plan_memory")
        plan_button = loc.make(gr.Button, {"value": "plan.run"}, elem_id="plan_run")
    plan_view = loc.make(gr.Textbox, {"label": "plan.output"}, lines=12, max_lines=30, interactive=False,
                         elem_id="plan_output")
    progress = gr.Markdown(elem_id="train_progress")
    plot = loc.make(gr.LinePlot, {"title": "train.loss_plot", "x_title": "plot.step", "y_title": "plot.loss"},
                    value=loss_frame([]), x="step", y="loss", elem_id="loss_plot")
    log = loc.make(gr.Textbox, {"label": "train.output"}, lines=10, max_lines=10, interactive=False,
                   elem_id="train_log")
    timer = gr.Timer(1.0, active=False)
    inputs = [*fields.values(), extra]

    def form(*values) -> tuple[dict[str, Any], str]:
        return {k: form_value(k, v) for k, v in zip(keys_in_order, values[:-1], strict=True)}, values[-1]

    keys_in_order = list(fields)

    def verdict_text(lang: str, verdict: str) -> str:
        return tr(lang, "train.valid") if verdict == VALID else verdict

    def update_preview(lang, *values):
        text, cmd, verdict = preview(*form(*values))
        return text, cmd, verdict_text(lang, verdict)

    for component in inputs:
        component.change(update_preview, [page.lang, *inputs], [yaml_view, command, check])

    def pick_model(lang, path, runs_dir):
        defaults = model_defaults(path or "")
        updates = [gr.update(value=defaults[k]) if k in defaults else gr.update()
                   for k in ("model_name_or_path", "adapter_name_or_path", "template", "lora_target")]
        return [*updates, model_card(lang, path)]

    fields["model_name_or_path"].input(
        pick_model, [page.lang, fields["model_name_or_path"], page.runs_dir],
        [fields["model_name_or_path"], fields["adapter_name_or_path"], fields["template"], fields["lora_target"],
         model_note])

    def refresh_pickers(lang, runs_dir, dataset_dir, selected):
        return (gr.update(choices=model_choices(runs_dir, page.started_elsewhere())),
                dataset_picker(lang, dataset_dir, selected))

    pickers = [page.lang, page.runs_dir, fields["dataset_dir"], fields["dataset"]]
    refresh.click(refresh_pickers, pickers, [fields["model_name_or_path"], fields["dataset"]])
    page.tabs.change(lambda runs_dir: gr.update(choices=model_choices(runs_dir, page.started_elsewhere())),
                     page.runs_dir, fields["model_name_or_path"])
    fields["dataset_dir"].change(dataset_picker, [page.lang, fields["dataset_dir"], fields["dataset"]],
                                 fields["dataset"])

    def preview_data(lang, num, *values):
        form_values, extra_yaml = form(*values)
        _, _, verdict = preview(form_values, extra_yaml)
        if verdict != VALID:
            return render_preview(lang, verdict)
        return render_preview(lang, data_preview(config_values(form_values, extra_yaml), int(num or 3)))

    preview_button.click(preview_data, [page.lang, preview_num, *inputs], preview_view)

    def start(lang, *values):
        form_values, extra_yaml = form(*values)
        _, _, verdict = preview(form_values, extra_yaml)
        if verdict != VALID:
            return verdict, gr.Timer(active=False)
        if page.jobs.get("train") and page.jobs["train"].running:
            return tr(lang, "train.already_running"), gr.Timer(active=True)
        page.jobs["train"] = start_training(config_values(form_values, extra_yaml))
        argv = " ".join(shlex.quote(a) for a in page.jobs["train"].argv)
        return tr(lang, "train.started", command=argv), gr.Timer(active=True)

    start_button.click(start, [page.lang, *inputs], [check, timer])

    def plan_run(lang, gpu_text: str, memory_text: str, *values):
        form_values, extra_yaml = form(*values)
        _, _, verdict = preview(form_values, extra_yaml)
        if verdict != VALID:
            return verdict, verdict
        text = plan(config_values(form_values, extra_yaml), gpu_text, memory_text)
        return text, plan_headline(text)

    plan_button.click(plan_run, [page.lang, gpus, gpu_memory, *inputs], [plan_view, estimate])

    def stop(lang):
        if page.jobs.get("train"):
            page.jobs["train"].stop()
        return tr(lang, "train.stop_requested")

    stop_button.click(stop, page.lang, check)

    def tick(lang):
        job = page.jobs.get("train")
        records = read_progress(job.output_dir) if job else []
        still = job is not None and job.running
        return (progress_text(lang, job, records), loss_frame(records), job.output() if job else "",
                gr.Timer(active=still))

    timer.tick(tick, page.lang, [progress, plot, log, timer])

    def on_load(lang, runs_dir, output_dir, dataset_dir):
        """A reopened page finds the run it started still going (and follows it), and lists what exists."""
        job = page.jobs.get("train")
        records = read_progress(job.output_dir) if job else []
        return (progress_text(lang, job, records), loss_frame(records), job.output() if job else "",
                gr.Timer(active=bool(job and job.running)),
                gr.update(choices=model_choices(runs_dir, page.started_elsewhere())),
                dataset_picker(lang, dataset_dir, []),
                output_dir or new_run_dir(runs_dir))

    page.on_load.append((on_load, [page.lang, page.runs_dir, fields["output_dir"], fields["dataset_dir"]],
                         [progress, plot, log, timer, fields["model_name_or_path"], fields["dataset"],
                          fields["output_dir"]]))
    page.on_language.append((tick, [page.lang], [progress, plot, log, timer]))
    page.on_language.append((refresh_pickers, pickers, [fields["model_name_or_path"], fields["dataset"]]))
