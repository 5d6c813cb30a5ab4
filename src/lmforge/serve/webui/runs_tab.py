"""The Runs tab: every run under the runs folder (started here or on the command line), one opened with its config,
log, curves, samples, metrics, evaluations and exports; curves of several runs on one plot; a stopped run resumed;
a run's config copied into the Train form."""

from __future__ import annotations

import html
import os
import time

import yaml

from lmforge.serve.webui.i18n import tr
from lmforge.serve.webui.jobs import resume_run, stop_run
from lmforge.serve.webui.page import Page, format_duration, status_text
from lmforge.serve.webui.runs import (
    Run,
    curves,
    evaluations,
    exported_files,
    final_metrics,
    find_runs,
    headline,
    logged_metrics,
    overlay,
    read_run,
    run_log_text,
    run_name,
    samples,
)
from lmforge.serve.webui.train_tab import config_into_form, field_default

TABLE_COLUMNS = ("run", "status", "stage", "model", "data", "steps", "final_loss", "evaluations", "duration",
                 "started")
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")  # Tableau 10


def colored(lang: str, frame, column: str):
    """A plot update with one color per series, its legend titled in the page's language. Why a color map: Gradio's
    LinePlot keeps the series it first drew when only its data changes, so a run (or metric) added later would not
    be drawn; a new color map redraws it."""
    import gradio as gr

    names = list(dict.fromkeys(frame[column])) if len(frame) else []
    title = tr(lang, f"plot.{column}")
    return gr.LinePlot(value=frame.rename(columns={column: title}), color=title,
                       color_map={n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)})


def runs_table(lang: str, runs: list[Run], root: str) -> str:
    """The runs as an HTML table (a status badge per run), newest first."""
    head = "".join(f"<th>{html.escape(tr(lang, f'runs.col.{c}'))}</th>" for c in TABLE_COLUMNS)
    rows = []
    for r in runs:
        cells = [run_name(r.path, root), status_text(lang, r), r.stage, r.model, r.dataset,
                 f"{r.step}/{r.max_steps}" if r.max_steps else str(r.step),
                 f"{r.final_loss:.4f}" if r.final_loss is not None else "",
                 " · ".join(headline(e) for e in evaluations(r.path)), format_duration(r.duration),
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else ""]
        tds = "".join(f"<td class='lmf-status-{r.status}'>{html.escape(c)}</td>" if i == 1 else
                      f"<td>{html.escape(c)}</td>" for i, c in enumerate(cells))
        rows.append(f"<tr data-run='{html.escape(r.path, quote=True)}'>{tds}</tr>")
    return f"<table class='lmf-runs'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def curve_frame(records: list[dict]):
    import pandas as pd

    return pd.DataFrame(curves(records), columns=["step", "metric", "value"])


def overlay_frame(paths: list[str], metric: str, root: str):
    import pandas as pd

    rows = overlay(paths, metric, {p: run_name(p, root) for p in paths}) if paths and metric else []
    return pd.DataFrame(rows, columns=["step", "value", "run"])


def run_summary(lang: str, run: Run) -> str:
    parts = [f"**{status_text(lang, run)}**", f"`{run.path}`"]
    if run.error:
        parts.append(tr(lang, "runs.error", error=run.error))
    if run.checkpoints:
        parts.append(tr(lang, "runs.checkpoints", steps=", ".join(map(str, run.checkpoints))))
    return " · ".join(parts)


def build(page: Page) -> None:
    import gradio as gr

    loc = page.loc
    with gr.Row():
        refresh = loc.make(gr.Button, {"value": "runs.refresh"}, elem_id="runs_refresh", scale=0)
        summary = gr.Markdown(elem_id="runs_summary")
    table = gr.HTML(elem_id="runs_table")
    with gr.Row():
        picked = loc.make(gr.Dropdown, {"label": "runs.open"}, choices=[], elem_id="run_picked", scale=3)
        resume = loc.make(gr.Button, {"value": "runs.resume"}, elem_id="run_resume", scale=0)
        stop = loc.make(gr.Button, {"value": "runs.stop"}, elem_id="run_stop", scale=0)
        copy = loc.make(gr.Button, {"value": "runs.copy"}, elem_id="run_copy", scale=0)
    message = gr.Markdown(elem_id="run_message")
    with loc.make(gr.Tab, {"label": "runs.details"}):
        details = gr.Markdown(elem_id="run_details")
        with gr.Row():
            loss_plot = loc.make(gr.LinePlot, {"title": "runs.curves", "x_title": "plot.step",
                                               "y_title": "plot.value"},
                                 value=curve_frame(""), x="step", y="value", color="metric", elem_id="run_curves")
        with gr.Row():
            metrics = loc.make(gr.JSON, {"label": "runs.metrics"}, elem_id="run_metrics")
            config = loc.make(gr.Code, {"label": "runs.config"}, language="yaml", interactive=False,
                              elem_id="run_config")
        log = loc.make(gr.Textbox, {"label": "runs.log"}, lines=12, max_lines=12, interactive=False,
                       elem_id="run_log")
        sample_view = loc.make(gr.JSON, {"label": "runs.samples"}, elem_id="run_samples")
        with gr.Row():
            evals = loc.make(gr.JSON, {"label": "runs.evaluations"}, elem_id="run_evals")
            exports = loc.make(gr.JSON, {"label": "runs.exports"}, elem_id="run_exports")
    with loc.make(gr.Tab, {"label": "runs.compare"}):
        with gr.Row():
            compared = loc.make(gr.Dropdown, {"label": "runs.compare_runs"}, choices=[], multiselect=True,
                                elem_id="compare_runs", scale=3)
            metric = loc.make(gr.Dropdown, {"label": "runs.compare_metric"}, choices=["loss"], value="loss",
                              allow_custom_value=True, elem_id="compare_metric", scale=1)
        overlay_plot = loc.make(gr.LinePlot, {"title": "runs.compare_plot", "x_title": "plot.step",
                                              "y_title": "plot.value"},
                                value=overlay_frame([], "", ""), x="step", y="value", color="run",
                                elem_id="compare_plot")
    timer = gr.Timer(3.0)

    known = gr.State([])  # the runs the pickers list: they are updated only when that changes (not mid-choice)

    def listing(lang, runs_dir, chosen, listed_before):
        runs = find_runs(runs_dir, page.started_elsewhere())
        names = [(run_name(r.path, runs_dir), r.path) for r in runs]
        counts = {s: sum(r.status == s for r in runs) for s in ("running", "finished", "stopped", "failed")}
        text = tr(lang, "runs.summary", n=len(runs), root=runs_dir or ".",
                  states=", ".join(f"{tr(lang, 'status.' + s)} {c}" for s, c in counts.items() if c))
        if [list(n) for n in names] == listed_before:
            return runs_table(lang, runs, runs_dir), text, gr.update(), gr.update(), listed_before
        return (runs_table(lang, runs, runs_dir), text, gr.update(choices=names),
                gr.update(choices=names, value=[p for p in chosen or [] if p in {p for _, p in names}]),
                [list(n) for n in names])

    listed, listing_inputs = [table, summary, picked, compared, known], [page.lang, page.runs_dir, compared, known]
    refresh.click(listing, listing_inputs, listed)
    timer.tick(listing, listing_inputs, listed)
    page.runs_dir.change(listing, listing_inputs, listed)
    page.tabs.change(listing, listing_inputs, listed)  # shown fresh when the tab opens

    def run_page(lang, path, run: Run | None) -> list:
        """The opened run's parts (each of its files read once)."""
        if run is None:
            return ["", colored(lang, curve_frame([]), "metric"), {}, "", "", [], [], []]
        from lmforge.runlog import read_log

        records = read_log(path, while_written=True)
        exported = [{"file": f, "bytes": size, "size": _size(size)} for f, size in exported_files(path)]
        return [run_summary(lang, run), colored(lang, curve_frame(records), "metric"), final_metrics(path, records),
                yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True) if run.config else "",
                run_log_text(path), samples(path), evaluations(path), exported]

    def open_run(lang, path, runs_dir):
        return run_page(lang, path, read_run(path) if path and os.path.isdir(path) else None)

    opened = [details, loss_plot, metrics, config, log, sample_view, evals, exports]
    picked.change(open_run, [page.lang, picked, page.runs_dir], opened)
    shown_state = gr.State("")  # the opened run's state when last shown: a running run is followed, and its end

    def follow(lang, path, root, shown):
        run = read_run(path) if path and os.path.isdir(path) else None
        state = run.status if run else ""
        if state == "running" or state != shown:
            return [*run_page(lang, path, run), state]
        return [*[gr.update()] * len(opened), shown]

    timer.tick(follow, [page.lang, picked, page.runs_dir, shown_state], [*opened, shown_state])

    def compare(lang, paths, chosen_metric, runs_dir):
        from lmforge.runlog import read_log

        available: list[str] = []
        for path in paths or []:
            available += [m for m in logged_metrics(read_log(path, while_written=True)) if m not in available]
        return (colored(lang, overlay_frame(paths or [], chosen_metric, runs_dir), "run"),
                gr.update(choices=available or ["loss"]))

    for trigger in (compared, metric):  # what a person picks (the metric's list follows the runs picked)
        trigger.input(compare, [page.lang, compared, metric, page.runs_dir], [overlay_plot, metric])

    def resume_it(lang, path):
        if not path:
            return tr(lang, "runs.pick_first")
        run = read_run(path)
        if not run.resumable:
            return tr(lang, "runs.not_resumable", status=status_text(lang, run))
        page.jobs[f"run:{os.path.realpath(path)}"] = resume_run(path)
        return tr(lang, "runs.resumed", step=run.checkpoints[-1])

    resume.click(resume_it, [page.lang, picked], message)

    def stop_it(lang, path):
        if not path:
            return tr(lang, "runs.pick_first")
        return tr(lang, "runs.stop_sent") if stop_run(path) else tr(lang, "runs.not_running")

    stop.click(stop_it, [page.lang, picked], message)

    form_keys = list(page.train_form)

    def copy_it(lang, path, runs_dir):
        if not path:
            return [tr(lang, "runs.pick_first"), gr.update(), *[gr.update()] * (len(form_keys) + 1)]
        form, extra = config_into_form(read_run(path).config, runs_dir)
        return [tr(lang, "runs.copied"), gr.Tabs(selected="train"),
                *[form.get(k, field_default(k)) for k in form_keys], extra]

    copy.click(copy_it, [page.lang, picked, page.runs_dir],
               [message, page.tabs, *page.train_form.values(), page.train_extra])
    page.on_load.append((listing, listing_inputs, listed))
    page.on_language.append((listing, listing_inputs, listed))
    page.on_language.append((open_run, [page.lang, picked, page.runs_dir], opened))  # texts made by the server
    page.on_language.append((compare, [page.lang, compared, metric, page.runs_dir], [overlay_plot, metric]))


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""
