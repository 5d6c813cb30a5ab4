"""The Train tab: a config from pickers and fields, its data previewed as the model will see it, its memory planned,
then the run started and watched (and found again when the page is reopened)."""

from __future__ import annotations

import html
import os
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
# The "More settings" sections (LLaMA-Factory's board has each of these on its page): section id -> fields.
MORE_SETTINGS: dict[str, dict[str, tuple[str, list[str] | None]]] = {
    "more.training": {
        "lr_scheduler_type": ("choice", ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                         "constant_with_warmup", "inverse_sqrt", "warmup_stable_decay"]),
        "warmup_steps": ("number", None), "max_grad_norm": ("number", None), "weight_decay": ("number", None),
        "val_size": ("number", None), "max_samples": ("number", None), "seed": ("number", None),
        "bf16": ("bool", None), "report_to": ("choice", ["none", "tensorboard", "wandb", "swanlab", "mlflow"]),
        "eval_strategy": ("choice", ["no", "steps", "epoch"]), "eval_steps": ("number", None),
        "save_total_limit": ("number", None)},
    "more.data": {"neat_packing": ("bool", None), "train_on_prompt": ("bool", None), "mask_history": ("bool", None),
                  "enable_thinking": ("bool", None), "neftune_noise_alpha": ("number", None)},
    "more.adapters": {
        "lora_alpha": ("number", None), "lora_dropout": ("number", None), "loraplus_lr_ratio": ("number", None),
        "additional_target": ("text", None), "use_rslora": ("bool", None), "use_dora": ("bool", None),
        "quantization_bit": ("number", None), "freeze_trainable_layers": ("number", None)},
    "more.preference": {"pref_beta": ("number", None), "pref_loss": ("choice", None), "reward_model": ("text", None),
                        "reward_funcs": ("text", None), "num_generations": ("number", None)},
    "more.scale": {"deepspeed": ("text", None)},
}
ALL_FIELDS = {**TRAIN_FORM, **{key: spec for fields in MORE_SETTINGS.values() for key, spec in fields.items()}}
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
    """The choices a form field offers: its own list, the key's registry (`stage`), or its type's values."""
    import typing

    from lmforge.config.schema import key_index

    if listed is not None:
        return listed
    key_info = key_index("train")[key]
    return list(key_info.choices or []) or [str(v) for v in typing.get_args(key_info.type)] or None


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
    if kind == "number" and default is not None:
        return make(gr.Number, texts, value=default, elem_id=key)
    if kind == "number":  # unset by default: a number box would send 0, so the text stays empty until typed
        return make(gr.Textbox, texts, value="", elem_id=key)
    return make(gr.Textbox, texts, value=default or "", elem_id=key)


def read_config_file(path: str) -> dict[str, Any]:
    """A config YAML's keys (ValueError for one that is not a mapping)."""
    import yaml

    with open(os.path.expanduser(path.strip()), encoding="utf-8") as fh:
        try:
            values = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ValueError(f"not YAML: {err}") from None
    if not isinstance(values, dict):
        raise ValueError("not a mapping of config keys")
    return values


def config_into_form(config: dict[str, Any], runs_dir: str) -> tuple[dict[str, Any], str]:
    """A run's (or any) config as Train form values, with a new output folder, and the keys the form has no field
    for as extra YAML. Resuming and overwriting are the old run's business, not the new one's."""
    import yaml

    values = {k: v for k, v in config.items() if k not in ("resume_from_checkpoint", "overwrite_output_dir")}
    form = {k: values.pop(k) for k in list(values) if k in ALL_FIELDS}
    form["output_dir"] = new_run_dir(runs_dir)
    if isinstance(form.get("dataset"), str):
        form["dataset"] = [d.strip() for d in form["dataset"].split(",") if d.strip()]
    return form, yaml.safe_dump(values, sort_keys=False, allow_unicode=True) if values else ""


def field_default(key: str) -> Any:
    """What a form field holds before anything is typed (a config loaded into the form replaces every field: a key
    it does not set goes back to this)."""
    kind, listed = ALL_FIELDS[key]
    default = _default(key)
    if kind == "dataset":
        return []
    if kind == "choice":
        choices = form_choices(key, listed)
        return default if default in choices else choices[0]
    if kind == "bool":
        return bool(default)
    return default if default is not None else ("" if kind != "model" else None)


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
    lines = [line.strip() for line in text.splitlines()]
    keep = [line for line in lines if line.startswith(("Fits", "Speed", "total"))]
    return "\n".join(keep) or (lines[-1] if lines else "")


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
    with loc.make(gr.Accordion, {"label": "more.title"}, open=False, elem_id="more_settings"):
        for section, section_fields in MORE_SETTINGS.items():
            loc.make(gr.Markdown, {"value": section})
            names = list(section_fields)
            for start in range(0, len(names), 4):
                with gr.Row():
                    for key in names[start: start + 4]:
                        fields[key] = _field(page, key, *section_fields[key])
    with gr.Row():  # LLaMA-Factory's "load arguments": any config file fills the form
        load_path = loc.make(gr.Textbox, {"label": "train.load_path", "placeholder": "train.load_placeholder"},
                             elem_id="load_config_path", scale=4)
        load_button = loc.make(gr.Button, {"value": "train.load"}, elem_id="load_config", scale=0)
    load_message = gr.Markdown(elem_id="load_message")
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
        """The form's values (as config values) and its extra YAML."""
        return {k: form_value(k, v) for k, v in zip(fields, values[:-1], strict=True)}, values[-1]

    def checked(*values) -> tuple[dict[str, Any] | None, str]:
        """The config's keys, or None and why it is not valid."""
        form_values, extra_yaml = form(*values)
        verdict = preview(form_values, extra_yaml)[2]
        return (config_values(form_values, extra_yaml), verdict) if verdict == VALID else (None, verdict)

    def update_preview(lang, *values):
        text, cmd, verdict = preview(*form(*values))
        return text, cmd, tr(lang, "train.valid") if verdict == VALID else verdict

    # one listener for every field: a config loaded into the form changes them all at once, and only the last
    # preview of such a burst is computed
    gr.on([component.change for component in inputs], update_preview, [page.lang, *inputs],
          [yaml_view, command, check], trigger_mode="always_last")

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
        values, verdict = checked(*values)
        return render_preview(lang, data_preview(values, int(num or 3)) if values else verdict)

    preview_button.click(preview_data, [page.lang, preview_num, *inputs], preview_view)

    def load_config(lang, path, runs_dir):
        try:
            form_values, extra_yaml = config_into_form(read_config_file(path), runs_dir)
        except (OSError, ValueError) as err:
            return [tr(lang, "train.load_failed", path=path, error=err), *[gr.update()] * (len(fields) + 1)]
        return [tr(lang, "train.loaded", path=path),
                *[form_values.get(k, field_default(k)) for k in fields], extra_yaml]

    load_button.click(load_config, [page.lang, load_path, page.runs_dir], [load_message, *fields.values(), extra])

    def start(lang, *values):
        values, verdict = checked(*values)
        if values is None:
            return verdict, gr.Timer(active=False)
        if page.jobs.get("train") and page.jobs["train"].running:
            return tr(lang, "train.already_running"), gr.Timer(active=True)
        page.jobs["train"] = start_training(values)
        argv = " ".join(shlex.quote(a) for a in page.jobs["train"].argv)
        return tr(lang, "train.started", command=argv), gr.Timer(active=True)

    start_button.click(start, [page.lang, *inputs], [check, timer])

    def plan_run(lang, gpu_text: str, memory_text: str, *values):
        values, verdict = checked(*values)
        if values is None:
            return verdict, verdict
        text = plan(values, gpu_text, memory_text)
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
