"""The Chat tab (and the whole of `lmforge webchat`): talk to a model loaded in the web UI's process."""

from __future__ import annotations

import os
from typing import Any

from lmforge.config.schema import ServeConfig
from lmforge.serve.webui.i18n import tr
from lmforge.serve.webui.page import Page, model_choices


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


def build(page: Page, engines: dict[str, Any], preset: ServeConfig | None) -> None:
    """Chat with a model loaded in this process (`preset`, or one picked on the page: a run's model or adapter, or
    any folder typed); an image can go with a message to a vision-language model."""
    import gradio as gr

    from lmforge.config.parse import load_command_config, model_target_overrides
    from lmforge.data.skips import SkipRecord
    from lmforge.errors import LmforgeError
    from lmforge.serve.engine import RequestError
    from lmforge.serve.load import load_engine

    loc = page.loc
    with gr.Row():
        preset_path = preset.model.adapter_name_or_path or preset.model.model_name_or_path if preset else None
        model = loc.make(gr.Dropdown, {"label": "chat.model"}, choices=[preset_path] if preset_path else [],
                         value=preset_path, allow_custom_value=True, elem_id="chat_model")
        system = loc.make(gr.Textbox, {"label": "chat.system"},
                          value=(preset.serve.system_prompt or "") if preset else "", elem_id="chat_system")
        temperature = loc.make(gr.Slider, {"label": "chat.temperature"}, minimum=0.0, maximum=2.0,
                               value=preset.generation.temperature if preset else 0.7, step=0.05,
                               elem_id="chat_temperature")
        max_tokens = loc.make(gr.Number, {"label": "chat.max_tokens"},
                              value=preset.generation.max_new_tokens if preset else 512, elem_id="chat_max_tokens")
    status = gr.Markdown(elem_id="chat_status")
    chatbot = loc.make(gr.Chatbot, {"label": "chat.chat"}, elem_id="chatbot", height=420)
    with gr.Row():
        message = loc.make(gr.Textbox, {"label": "chat.message", "placeholder": "chat.placeholder"},
                           elem_id="chat_message", scale=4)
        image = loc.make(gr.Image, {"label": "chat.image"}, type="filepath", elem_id="chat_image", height=120,
                         scale=1)
    clear = loc.make(gr.Button, {"value": "chat.clear"}, elem_id="chat_clear")
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

    def respond(lang: str, text: str, history: list[dict], state: dict, image_path: str | None, path: str,
                system_prompt: str, temp: float, budget: float):
        history = list(history or [])
        if not text.strip():
            yield history, state, "", image_path, ""
            return
        shown = text + (f" [image: {os.path.basename(image_path)}]" if image_path else "")
        before = list(history)
        try:
            replies = chat_turn(engine_for((path or "").strip()), state, text, image_path, system_prompt, temp,
                                budget)
            history += [{"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
            for reply in replies:
                history[-1]["content"] = reply
                yield history, state, "", None, ""
        except (LmforgeError, RequestError, SkipRecord) as err:  # bad model, image, or too long a conversation
            yield before, state, text, image_path, tr(lang, "chat.error", error=err)
            return
        yield history, state, "", None, ""

    message.submit(respond, [page.lang, message, chatbot, conversation, image, model, system, temperature,
                             max_tokens],
                   [chatbot, conversation, message, image, status])
    clear.click(lambda: ([], {"messages": [], "images": []}, ""), None, [chatbot, conversation, status])



    def refresh(runs_dir, current):
        choices = model_choices(runs_dir, page.started_elsewhere())
        return gr.update(choices=choices + ([(current, current)] if current and current not in
                                            {p for _, p in choices} else []))

    page.on_load.append((refresh, [page.runs_dir, model], [model]))
    for event in (page.runs_dir.change, page.tabs.change) if page.tabs is not None else (page.runs_dir.change,):
        event(refresh, [page.runs_dir, model], model)
