"""The Evaluate and Export tabs: `lmforge eval|export key=value ...` from the same model picker as the Train tab,
run as a child process with its progress shown; a run's evaluations and exports are written inside the run's folder,
where its page in the Runs tab lists them."""

from __future__ import annotations

import json
import os
import shlex
import time
import typing
from typing import Any

from lmforge.serve.webui.catalog import model_info
from lmforge.serve.webui.i18n import config_texts, tr
from lmforge.serve.webui.jobs import Job
from lmforge.serve.webui.page import Page, format_duration, job_state, model_choices
from lmforge.serve.webui.runs import export_dir_for


def choices_of(key: str) -> list[str]:
    """The values an export key takes, from its type (the config is their one source)."""
    from lmforge.config.exporting import ExportArguments

    return list(typing.get_args(typing.get_type_hints(ExportArguments)[key]))


# key -> (default, choices); labels and help come from the language files (config keys of the eval/export schema)
EVAL_FORM: dict[str, tuple[Any, list[str] | None]] = {
    "task": ("cmmlu", None), "task_dir": ("evaluation", None), "n_shot": (5, None), "max_samples": ("", None),
    "dataset": ("", None), "dataset_dir": ("data", None), "output_dir": ("", None)}
EXPORT_FORM: dict[str, tuple[Any, list[str] | None]] = {
    "export_dir": ("", None), "infer_dtype": ("auto", ["auto", "bfloat16", "float16", "float32"]),
    "export_size": (5, None), "export_gguf": (False, None), "gguf_outtype": ("f16", None),
    "export_quantization": ("none", None)}
RESULT_FILES = {"eval": "results.json"}


def output_for(command: str, path: str, values: dict[str, Any]) -> str:
    """Where a run's evaluation or export goes, so that its page lists it: an evaluation inside the run's folder,
    an export beside it."""
    if command == "eval":
        return os.path.join(path, f"eval_{values.get('task') or 'task'}")
    return export_dir_for(path)


def _model_targets(path: str) -> dict[str, str]:
    info = model_info(path or "")
    return info.targets() if info.kind else {"model_name_or_path": path} if path else {}


def _field(loc, name: str, key: str, default: Any, listed: list[str] | None):
    import gradio as gr

    # the eval command's output_dir is not training's (the one config key two commands name alike)
    texts = {"label": "eval.output_dir", "info": "eval.output_dir_info"} if key == "output_dir" else config_texts(key)
    if key in ("gguf_outtype", "export_quantization"):
        listed = choices_of(key)
    if isinstance(default, bool):
        return loc.make(gr.Checkbox, texts, value=default, elem_id=f"{name}_{key}")
    if key == "task":  # the benchmarks lmforge knows by name, and anything typed (a folder under task_dir)
        from lmforge.config.evaluation import CLS_TASK, GENERATE_TASK, PERPLEXITY_TASK

        return loc.make(gr.Dropdown, texts, choices=["mmlu", "cmmlu", "ceval", PERPLEXITY_TASK, GENERATE_TASK,
                                                     CLS_TASK], value=default, allow_custom_value=True,
                        elem_id=f"{name}_{key}")
    if listed:
        return loc.make(gr.Dropdown, texts, choices=listed, value=default, elem_id=f"{name}_{key}")
    return loc.make(gr.Textbox, texts, value=str(default), elem_id=f"{name}_{key}")


def build(page: Page, name: str, command: str, form: dict[str, tuple[Any, list[str] | None]]) -> None:
    import gradio as gr

    loc = page.loc
    with gr.Row():
        model = loc.make(gr.Dropdown, config_texts("model_name_or_path"), choices=[], value=None,
                         allow_custom_value=True, elem_id=f"{name}_model", scale=3)
        adapter = loc.make(gr.Textbox, config_texts("adapter_name_or_path"), value="", elem_id=f"{name}_adapter")
    fields = {}
    keys = list(form)
    for row in range(0, len(keys), 4):
        with gr.Row():
            for key in keys[row: row + 4]:
                fields[key] = _field(loc, name, key, *form[key])
    out_key = "output_dir" if command == "eval" else "export_dir"
    run = loc.make(gr.Button, {"value": f"{name}.run"}, variant="primary", elem_id=f"{name}_run")
    status = gr.Markdown(elem_id=f"{name}_status")
    output = loc.make(gr.Textbox, {"label": "tools.output"}, lines=12, max_lines=12, interactive=False,
                      elem_id=f"{name}_output")
    timer = gr.Timer(1.0, active=False)
    started: dict[str, float] = {}

    def pick(path, *values):
        targets = _model_targets(path)
        form_values = dict(zip(fields, values, strict=True))
        out = output_for(command, path, form_values) if model_info(path or "").kind else form_values[out_key]
        return (gr.update(value=targets.get("model_name_or_path", path)),
                targets.get("adapter_name_or_path", ""), out)

    model.input(pick, [model, *fields.values()], [model, adapter, fields[out_key]])

    if command == "eval":  # an evaluation placed in a run's folder is named by its task
        def retask(task, output_dir):
            folder, leaf = os.path.split(output_dir.rstrip(os.sep)) if output_dir else ("", "")
            return os.path.join(folder, f"eval_{task}") if leaf.startswith("eval_") else output_dir

        fields["task"].change(retask, [fields["task"], fields["output_dir"]], fields["output_dir"])

    def start(lang, path, adapter_path, *values):
        args = [f"model_name_or_path={path}"] if path else []
        args += [f"adapter_name_or_path={adapter_path}"] if adapter_path else []
        args += [f"{k}={v}" for k, v in zip(fields, values, strict=True) if v not in ("", None)]
        log = os.path.join(os.path.expanduser("~"), ".cache", "lmforge", f"webui_{name}.log")
        if os.path.exists(log):
            os.remove(log)  # the output shown is this command's
        page.jobs[name] = Job([command, *args], log)
        page.jobs[name].start()
        started[name] = time.time()
        shown = " ".join(shlex.quote(a) for a in args)
        return tr(lang, "tools.started", command=f"lmforge {command} {shown}"), gr.Timer(active=True)

    run.click(start, [page.lang, model, adapter, *fields.values()], [status, timer])

    def tick(lang, *values):
        job = page.jobs.get(name)
        if job is None:
            return "", "", gr.Timer(active=False)
        text = job.output()
        directory = dict(zip(fields, values, strict=True)).get(out_key) or ""
        result = os.path.join(directory, RESULT_FILES.get(command, ""))
        if not job.running and command in RESULT_FILES and os.path.isfile(result):
            with open(result, encoding="utf-8") as fh:
                text += "\n" + json.dumps({k: v for k, v in json.load(fh).items() if k != "config"}, indent=1)[:4000]
        if not job.running and command == "export" and os.path.isdir(directory):
            listing = [f"{n}  {os.path.getsize(os.path.join(directory, n)):,} B" for n in sorted(os.listdir(directory))
                       if os.path.isfile(os.path.join(directory, n))]
            text += "\n" + tr(lang, "tools.files", where=directory) + "\n" + "\n".join(listing)
        head = job_state(lang, job)
        elapsed = format_duration(time.time() - started.get(name, time.time())) if job.running else ""
        last = next((line for line in reversed(job.output(5).splitlines()) if line.strip()), "")
        progress = tr(lang, "tools.progress", command=command, status=head, elapsed=elapsed, last=last[:160]) \
            if job.running else f"{command}: {head}"
        return progress, text, gr.Timer(active=job.running)

    timer.tick(tick, [page.lang, *fields.values()], [status, output, timer])

    def refresh(runs_dir):
        return gr.update(choices=model_choices(runs_dir, page.started_elsewhere()))

    page.on_load.append((refresh, [page.runs_dir], [model]))
    for event in (page.runs_dir.change, page.tabs.change):  # a run finished since: its model is offered
        event(refresh, page.runs_dir, model)
