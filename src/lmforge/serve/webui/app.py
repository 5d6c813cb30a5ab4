"""`lmforge webui` (train, watch, evaluate, chat, export) and `lmforge webchat` (chat only), in Gradio.

The pages only collect values and show results: configs are checked by the same code as the CLI, and training,
evaluation and export run as `lmforge` child processes writing the same files they always write.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Callable
from typing import Any

from lmforge.config.schema import ServeConfig
from lmforge.config.serving import ServeArguments, is_loopback
from lmforge.errors import ConfigError
from lmforge.serve.webui_jobs import Job, config_values, plan, preview, read_progress, start_training

logger = logging.getLogger(__name__)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline first: no calls home

# The training form: key -> (label, kind, choices); values are checked by the config schema, not here. Choices
# that come from a registry are read from the key itself (`stage`: every registered stage).
TRAIN_FORM: dict[str, tuple[str, str, list[str] | None]] = {
    "stage": ("Stage", "choice", None),
    "model_name_or_path": ("Model (directory or hub id)", "text", None),
    "finetuning_type": ("Fine-tuning type", "choice", ["lora", "full", "freeze"]),
    "template": ("Chat template (unset: the tokenizer's own)", "text", None),
    "dataset": ("Dataset(s)", "text", None),
    "dataset_dir": ("Dataset folder (dataset_info.json)", "text", None),
    "cutoff_len": ("Cutoff length", "number", None),
    "learning_rate": ("Learning rate", "number", None),
    "num_train_epochs": ("Epochs", "number", None),
    "max_steps": ("Max steps (-1: epochs decide)", "number", None),
    "per_device_train_batch_size": ("Batch size per device", "number", None),
    "gradient_accumulation_steps": ("Gradient accumulation", "number", None),
    "lora_rank": ("LoRA rank", "number", None),
    "packing": ("Packing", "bool", None),
    "logging_steps": ("Log every N steps", "number", None),
    "save_steps": ("Save every N steps", "number", None),
    "output_dir": ("Output directory", "text", None),
}
UI_DEFAULTS = {"stage": "sft"}  # what most people come to the page for; the CLI's default stays `pt`


def form_choices(key: str, listed: list[str] | None) -> list[str] | None:
    """The choices a form field offers: its own list, or the key's registry (`stage`)."""
    from lmforge.config.schema import key_index

    return listed if listed is not None else list(key_index("train")[key].choices or []) or None


def _field(key: str, spec: tuple[str, str, list[str] | None]):
    import gradio as gr

    from lmforge.config.schema import key_index

    label, kind, choices = spec
    choices = form_choices(key, choices)
    default = UI_DEFAULTS.get(key, key_index("train")[key].default)
    default = default.value if hasattr(default, "value") else default
    if kind == "choice":
        return gr.Dropdown(choices=choices, value=default if default in choices else choices[0], label=label,
                           elem_id=key)
    if kind == "bool":
        return gr.Checkbox(value=bool(default), label=label, elem_id=key)
    if kind == "number":
        return gr.Number(value=default, label=label, elem_id=key)
    return gr.Textbox(value=default or "", label=label, elem_id=key)


def _loss_frame(records: list[dict]):
    import pandas as pd

    rows = [{"step": r["step"], "loss": r["loss"]} for r in records if "loss" in r and "step" in r]
    return pd.DataFrame(rows, columns=["step", "loss"])


def _progress_text(job: Job | None, records: list[dict]) -> str:
    if job is None:
        return "No run started."
    losses = [r for r in records if "loss" in r]
    latest = f" · step {losses[-1]['step']} · loss {losses[-1]['loss']:.4f}" if losses else ""
    return f"Run {job.status()}{latest} · {len(losses)} logged steps"


def _train_tab(jobs: dict[str, Job | None]) -> None:
    import gradio as gr

    fields = {}
    keys = list(TRAIN_FORM)
    for start in range(0, len(keys), 4):
        with gr.Row():
            for key in keys[start: start + 4]:
                fields[key] = _field(key, TRAIN_FORM[key])
    extra = gr.Code(label="Extra keys (YAML; any config key, wins over the form)", language="yaml", value="",
                    elem_id="extra_yaml")
    with gr.Row():
        yaml_view = gr.Code(label="Config (live preview)", language="yaml", interactive=False, elem_id="yaml_preview")
        with gr.Column():
            command = gr.Textbox(label="Command", interactive=False, elem_id="command_preview")
            check = gr.Markdown(elem_id="config_check")
            with gr.Row():
                start_button = gr.Button("Start training", variant="primary", elem_id="start_training")
                stop_button = gr.Button("Stop", elem_id="stop_training")
    with gr.Row():  # will it fit? `lmforge plan` on the config as it stands
        gpus = gr.Textbox(label="Plan for GPUs", value="1xRTX-4090", elem_id="plan_gpus",
                          info="e.g. 1xRTX-4090, 8xH100-80GB, or a count with the memory beside it")
        gpu_memory = gr.Textbox(label="GPU memory (a device not in the table)", value="", elem_id="plan_memory",
                                info="e.g. 24GiB")
        plan_button = gr.Button("Will it fit?", elem_id="plan_run")
    plan_view = gr.Textbox(label="Plan", lines=12, max_lines=30, interactive=False, elem_id="plan_output")
    progress = gr.Markdown("No run started.", elem_id="train_progress")
    plot = gr.LinePlot(_loss_frame([]), x="step", y="loss", title="Training loss", elem_id="loss_plot")
    log = gr.Textbox(label="Output", lines=10, max_lines=10, interactive=False, elem_id="train_log")
    timer = gr.Timer(1.0, active=False)
    inputs = [*fields.values(), extra]

    def form(*values) -> tuple[dict[str, Any], str]:
        return dict(zip(keys, values[:-1], strict=True)), values[-1]

    def update_preview(*values):
        return preview(*form(*values))

    for component in inputs:
        component.change(update_preview, inputs, [yaml_view, command, check])

    def start(*values):
        form_values, extra_yaml = form(*values)
        text, _, verdict = preview(form_values, extra_yaml)
        if verdict != "The config is valid.":
            return verdict, gr.Timer(active=False)
        if jobs.get("train") and jobs["train"].running:
            return "A run is already going: stop it first.", gr.Timer(active=True)
        jobs["train"] = start_training(config_values(form_values, extra_yaml))
        return f"Started: `{' '.join(shlex.quote(a) for a in jobs['train'].argv)}`", gr.Timer(active=True)

    start_button.click(start, inputs, [check, timer])

    def plan_run(gpu_text: str, memory_text: str, *values):
        form_values, extra_yaml = form(*values)
        _, _, verdict = preview(form_values, extra_yaml)
        if verdict != "The config is valid.":
            return verdict
        return plan(config_values(form_values, extra_yaml), gpu_text, memory_text)

    plan_button.click(plan_run, [gpus, gpu_memory, *inputs], plan_view)

    def stop():
        if jobs.get("train"):
            jobs["train"].stop()
        return "Stop requested (SIGTERM)."

    stop_button.click(stop, None, check)

    def tick(output_dir: str):
        job = jobs.get("train")
        records = read_progress(output_dir)
        still = job is not None and job.running
        return (_progress_text(job, records), _loss_frame(records), job.output() if job else "",
                gr.Timer(active=still))

    timer.tick(tick, fields["output_dir"], [progress, plot, log, timer])


def _command_tab(jobs: dict[str, Job | None], name: str, command: str, form: dict[str, tuple[str, Any]],
                 result_file: str | None = None) -> None:
    """A tab that runs `lmforge COMMAND key=value ...` from its fields and shows the output (and a result file)."""
    import gradio as gr

    fields = {}
    with gr.Row():
        for key, (label, default) in form.items():
            fields[key] = (gr.Checkbox(value=default, label=label, elem_id=f"{name}_{key}") if isinstance(default, bool)
                           else gr.Textbox(value=str(default), label=label, elem_id=f"{name}_{key}"))
    run = gr.Button(f"Run {command}", variant="primary", elem_id=f"{name}_run")
    status = gr.Markdown(elem_id=f"{name}_status")
    output = gr.Textbox(label="Output", lines=12, max_lines=12, interactive=False, elem_id=f"{name}_output")
    timer = gr.Timer(1.0, active=False)

    def start(*values):
        args = [f"{k}={v}" for k, v in zip(fields, values, strict=True) if v not in ("", None)]
        jobs[name] = Job([command, *args], os.path.join(os.path.expanduser("~"), ".cache", "lmforge",
                                                         f"webui_{name}.log"))
        jobs[name].start()
        return f"Started: `lmforge {command} {' '.join(shlex.quote(a) for a in args)}`", gr.Timer(active=True)

    run.click(start, list(fields.values()), [status, timer])

    def tick(*values):
        job = jobs.get(name)
        text = job.output() if job else ""
        directory = dict(zip(fields, values, strict=True)).get("output_dir") or ""
        if job and not job.running and result_file and os.path.isfile(os.path.join(directory, result_file)):
            with open(os.path.join(directory, result_file), encoding="utf-8") as fh:
                text += "\n" + json.dumps({k: v for k, v in json.load(fh).items() if k != "config"}, indent=1)[:4000]
        return (f"{command}: {job.status()}" if job else ""), text, gr.Timer(active=bool(job and job.running))

    timer.tick(tick, list(fields.values()), [status, output, timer])


def chat_turn(engine, state: dict[str, list], text: str, image_path: str | None, system_prompt: str,
              temperature: float, budget: float):
    """One web-chat exchange: the user's message (with an uploaded image for a vision-language model) added to the
    conversation in `state` (messages with image placeholders, and the images' paths), then the reply's text as it
    grows. Raises LmforgeError/RequestError with what to tell the user."""
    from lmforge.data import media
    from lmforge.data.multimodal import MediaOptions, prompt_inputs
    from lmforge.data.template import prompt_ids
    from lmforge.errors import ConfigError
    from lmforge.model.sampling import SamplingParams

    processor = getattr(engine, "processor", None)
    if image_path and processor is None:
        raise ConfigError("This model takes text only: remove the image to send the message.")
    images = state["images"] + ([image_path] if image_path else [])
    user = {"role": "user", "content": media.PLACEHOLDERS["images"] * bool(image_path) + text}
    conversation = ([{"role": "system", "content": system_prompt}] if system_prompt.strip() else []) + \
        state["messages"] + [user]
    inputs = None
    if processor is not None:
        ids, inputs = prompt_inputs(processor, conversation, [MediaOptions().image(p) for p in images])
        inputs = inputs if images else None
    else:
        ids = prompt_ids(engine.tokenizer, conversation)
    limit = engine.check_fits(len(ids), min(int(budget or 512), engine.context_length - len(ids)))
    reply = ""
    for delta in engine.stream(ids, SamplingParams(max_tokens=limit, temperature=temperature), media=inputs):
        reply += delta
        yield reply
    state["messages"] += [user, {"role": "assistant", "content": reply}]
    state["images"] = images


def _chat_tab(engines: dict[str, Any], preset: ServeConfig | None) -> None:
    """Chat with a model loaded in this process (`preset`, or one named on the page); an image can go with a
    message to a vision-language model."""
    import gradio as gr

    from lmforge.config.parse import load_command_config, model_target_overrides
    from lmforge.data.skips import SkipRecord
    from lmforge.errors import LmforgeError
    from lmforge.serve.engine import RequestError
    from lmforge.serve.load import load_engine

    with gr.Row():
        model = gr.Textbox(label="Model or adapter directory", elem_id="chat_model",
                           value=preset.model.adapter_name_or_path or preset.model.model_name_or_path if preset else "")
        system = gr.Textbox(label="System prompt", value=(preset.serve.system_prompt or "") if preset else "",
                            elem_id="chat_system")
        temperature = gr.Slider(0.0, 2.0, value=preset.generation.temperature if preset else 0.7, step=0.05,
                                label="Temperature (0: greedy)", elem_id="chat_temperature")
        max_tokens = gr.Number(value=preset.generation.max_new_tokens if preset else 512, label="Max new tokens",
                               elem_id="chat_max_tokens")
    status = gr.Markdown(elem_id="chat_status")
    chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=420)
    with gr.Row():
        message = gr.Textbox(label="Message", placeholder="Type and press Enter", elem_id="chat_message", scale=4)
        image = gr.Image(label="Image (vision-language models)", type="filepath", elem_id="chat_image", height=120,
                         scale=1)
    clear = gr.Button("Clear", elem_id="chat_clear")
    conversation = gr.State({"messages": [], "images": []})

    def engine_for(path: str):
        if path not in engines:
            for old in engines.values():
                old.close()
            engines.clear()
            cfg = preset if preset and path in (preset.model.model_name_or_path, preset.model.adapter_name_or_path) \
                else load_command_config("serve", None, model_target_overrides(path))
            engines[path] = load_engine(cfg)
        return engines[path]

    def respond(text: str, history: list[dict], state: dict, image_path: str | None, path: str,
                system_prompt: str, temp: float, budget: float):
        history = list(history or [])
        if not text.strip():
            yield history, state, "", image_path, ""
            return
        shown = text + (f" [image: {os.path.basename(image_path)}]" if image_path else "")
        before = list(history)
        try:
            replies = chat_turn(engine_for(path.strip()), state, text, image_path, system_prompt, temp, budget)
            history += [{"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
            for reply in replies:
                history[-1]["content"] = reply
                yield history, state, "", None, ""
        except (LmforgeError, RequestError, SkipRecord) as err:  # bad model, image, or too long a conversation
            yield before, state, text, image_path, f"{err} (Clear the chat to start over.)"
            return
        yield history, state, "", None, ""

    message.submit(respond, [message, chatbot, conversation, image, model, system, temperature, max_tokens],
                   [chatbot, conversation, message, image, status])
    clear.click(lambda: ([], {"messages": [], "images": []}, ""), None, [chatbot, conversation, status])


def build_webui(preset: ServeConfig | None = None):
    import gradio as gr

    jobs: dict[str, Job | None] = {}
    engines: dict[str, Any] = {}
    with gr.Blocks(title="lmforge") as demo:
        gr.Markdown("# lmforge\nBuild a training config, run it and watch the loss; evaluate; chat; export.")
        with gr.Tab("Train"):
            _train_tab(jobs)
        with gr.Tab("Evaluate"):
            _command_tab(jobs, "eval", "eval", {
                "model_name_or_path": ("Model", ""), "adapter_name_or_path": ("Adapter", ""),
                "task": ("Task (cmmlu, mmlu, ceval, perplexity, generate)", "cmmlu"),
                "task_dir": ("Benchmark folder", "evaluation"), "n_shot": ("Shots", 5),
                "max_samples": ("Questions per subject", ""), "dataset": ("Dataset (perplexity/generate)", ""),
                "output_dir": ("Output directory", "")}, result_file="results.json")
        with gr.Tab("Chat"):
            _chat_tab(engines, preset)
        with gr.Tab("Export"):
            _command_tab(jobs, "export", "export", {
                "model_name_or_path": ("Model", ""), "adapter_name_or_path": ("Adapter", ""),
                "export_dir": ("Export directory", ""), "infer_dtype": ("dtype (auto, bfloat16, float16, float32)",
                                                                        "auto"),
                "export_size": ("Shard size (GB)", 5), "export_gguf": ("GGUF too", False),
                "gguf_outtype": (f"GGUF type ({_choices('gguf_outtype')})", "f16"),
                "export_quantization": (f"Quantized checkpoint for vLLM ({_choices('export_quantization')})",
                                        "none")})
    return demo


def _choices(key: str) -> str:
    """The values an export key takes, from its type (the config is their one source)."""
    import typing

    from lmforge.config.exporting import ExportArguments

    return ", ".join(typing.get_args(typing.get_type_hints(ExportArguments)[key]))


def build_webchat(cfg: ServeConfig):
    import gradio as gr

    with gr.Blocks(title="lmforge chat") as demo:
        _chat_tab({}, cfg)
    return demo


def page_credentials(host: str, share: bool, webui_auth: str | None) -> tuple[str, str] | None:
    """Gradio's `auth` for a page: required (exit 2 without it) when anyone but this machine can reach the page,
    since the web UI starts training runs and reads local files. `webui_auth` or $LMFORGE_WEBUI_AUTH: user:password."""
    value = webui_auth or os.environ.get("LMFORGE_WEBUI_AUTH") or None
    credentials = None
    if value is not None:
        user, _, password = value.partition(":")
        if not user or not password:
            raise ConfigError("Config error: 'webui_auth' (or $LMFORGE_WEBUI_AUTH) must be `user:password`.")
        credentials = (user, password)
    exposed = [what for what, on in ((f"host {host} (other machines)", not is_loopback(host)),
                                     ("share: true (a public Gradio link)", share)) if on]
    if exposed and credentials is None:
        raise ConfigError(f"Config error: the web UI would be reachable through {' and '.join(exposed)} without a "
                          f"password; it can start training runs and read local files. Set `webui_auth: "
                          f"user:password` (or $LMFORGE_WEBUI_AUTH), or keep `host: 127.0.0.1` and `share: false`.")
    if exposed:
        logger.warning("The web UI is exposed through %s, behind a password for user '%s'.", " and ".join(exposed),
                       credentials[0])
    return credentials


def _launch(build: Callable[[], Any], serve: ServeArguments) -> None:
    from starlette.middleware import Middleware

    from lmforge.serve.http_app import LoopbackNames

    auth = page_credentials(serve.host, serve.share, serve.webui_auth)  # before anything is built or bound
    # a page on loopback answers loopback names only: a web page elsewhere cannot start runs through DNS rebinding
    local = is_loopback(serve.host) and not serve.share
    middleware = [Middleware(LoopbackNames, allowed=serve.allowed_hosts)] if local else []
    build().queue().launch(server_name=serve.host, server_port=serve.port if serve.port is not None else 7860,
                           share=serve.share, auth=auth, show_error=True, app_kwargs={"middleware": middleware})


def run_webui(cfg: ServeConfig | None) -> None:
    preset = cfg if cfg is not None and cfg.model.model_name_or_path else None
    _launch(lambda: build_webui(preset), cfg.serve if cfg is not None else ServeArguments())


def run_webchat(cfg: ServeConfig) -> None:
    _launch(lambda: build_webchat(cfg), cfg.serve)
