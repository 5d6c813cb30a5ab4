"""`lmforge chat`: a multi-turn conversation in the terminal, streamed as it is generated."""

from __future__ import annotations

import logging
import os
import sys

from lmforge.config.schema import ServeConfig
from lmforge.data import media
from lmforge.data.multimodal import MediaOptions, prompt_inputs
from lmforge.data.skips import SkipRecord
from lmforge.data.template import prompt_ids
from lmforge.model.sampling import SamplingParams
from lmforge.serve.engine import RequestError
from lmforge.serve.load import load_engine, served_name

HELP = ("Commands: /image PATH attaches an image to your next message (vision-language models), /clear starts a new "
        "conversation, /exit quits (so does Ctrl-D); Ctrl-C stops a reply.")


class Conversation:
    """The messages so far. When they outgrow the context, the oldest exchanges are dropped (never the system
    prompt or the newest message), as training truncates long conversations."""

    def __init__(self, engine, system_prompt: str | None, max_new_tokens: int,
                 media_options: MediaOptions | None = None):
        self.engine, self.max_new_tokens = engine, max_new_tokens
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.turns: list[dict] = []
        self.images: list = []  # the conversation's images, in the order of their placeholders
        self.media_options = media_options or MediaOptions()

    def clear(self) -> None:
        self.turns, self.images = [], []

    def load_image(self, path: str):
        """An image for the next message (SkipRecord naming the file when it cannot be read)."""
        return self.media_options.image(media.resolve(path, [os.getcwd()]))

    def _inputs(self) -> tuple[list[int], dict | None]:
        messages = self.system + self.turns
        processor = getattr(self.engine, "processor", None)
        if processor is None:
            return prompt_ids(self.engine.tokenizer, messages), None
        ids, inputs = prompt_inputs(processor, messages, self.images)
        return ids, inputs if self.images else None

    def prompt(self) -> tuple[list[int], int, dict | None]:
        """Token ids to continue, the reply's token budget and the pixel inputs; drops old exchanges (and their
        images) that do not fit."""
        while True:
            ids, inputs = self._inputs()
            room = self.engine.context_length - len(ids)
            if room >= min(self.max_new_tokens, 16) or len(self.turns) <= 1:
                break
            dropped, self.turns = self.turns[:2], self.turns[2:]  # the oldest user message and its reply
            self.images = self.images[sum(media.content_count(m, "images") for m in dropped):]
            print("(the conversation outgrew the context: its oldest exchange was dropped)", file=sys.stderr)
        return ids, self.engine.check_fits(len(ids), min(self.max_new_tokens, max(room, 1))), inputs

    def reply(self, user_text: str, params: SamplingParams, out=sys.stdout, images: list | None = None) -> str:
        """Add the user's message (with `images` before its text), stream the reply to `out`, and keep it in the
        conversation."""
        images = images or []
        self.turns.append({"role": "user", "content": media.PLACEHOLDERS["images"] * len(images) + user_text})
        self.images += images
        try:
            ids, budget, inputs = self.prompt()
        except RequestError:
            self.turns.pop()
            del self.images[len(self.images) - len(images):]
            raise
        params.max_tokens = budget
        parts: list[str] = []
        try:
            for text in self.engine.stream(ids, params, media=inputs):
                parts.append(text)
                out.write(text)
                out.flush()
        except KeyboardInterrupt:
            out.write(" [stopped]")
        out.write("\n")
        self.turns.append({"role": "assistant", "content": "".join(parts)})
        return "".join(parts)


def quiet_libraries() -> None:
    """Once the model is loaded, library warnings (deprecations, generation notices) would land in the middle of a
    reply on the terminal: they are dropped, and libraries speak only on errors."""
    import transformers

    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()


def attach(chat: Conversation, path: str) -> list:
    """`/image PATH`: the image, read now so that a bad path is said at once (nothing attached then)."""
    if getattr(chat.engine, "processor", None) is None:
        print("(this model takes text only: /image needs a vision-language model)")
        return []
    if not path:
        print("(usage: /image PATH)")
        return []
    try:
        image = chat.load_image(path)
    except SkipRecord as err:
        print(f"(not attached: {err})")
        return []
    print(f"(image attached to your next message: {path})")
    return [image]


def run_chat(cfg: ServeConfig) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    engine = load_engine(cfg)
    chat = Conversation(engine, cfg.serve.system_prompt, cfg.generation.max_new_tokens,
                        MediaOptions(cfg.data.image_max_pixels, cfg.data.image_min_pixels))
    pending: list = []  # images attached to the next message
    quiet_libraries()
    print(f"lmforge chat with {served_name(cfg)}. {HELP}")
    try:
        while True:
            try:
                text = input("\nUser: ").strip()
            except (EOFError, KeyboardInterrupt):
                break
            if text in ("/exit", "/quit"):
                break
            if text == "/clear":
                chat.clear()
                pending = []
                print("(a new conversation)")
                continue
            if text.split(" ", 1)[0] == "/image":
                pending += attach(chat, text[len("/image"):].strip())
                continue
            if not text:
                continue
            if text.startswith("/") and " " not in text:
                print(f"Unknown command {text}. {HELP}")
                continue
            print("Assistant: ", end="", flush=True)
            try:
                chat.reply(text, SamplingParams.from_generation(cfg.generation), images=pending)
                pending = []
            except RequestError as err:
                print(f"\n(error: {err} Use /clear to start over.)")
    finally:
        engine.close()
    print("\nBye.")
