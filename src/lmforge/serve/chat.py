"""`lmforge chat`: a multi-turn conversation in the terminal, streamed as it is generated."""

from __future__ import annotations

import logging
import sys

from lmforge.config.schema import ServeConfig
from lmforge.data.template import prompt_ids
from lmforge.serve.engine import RequestError
from lmforge.serve.load import load_engine, served_name
from lmforge.serve.sampling import SamplingParams

HELP = "Commands: /clear starts a new conversation, /exit quits (so does Ctrl-D); Ctrl-C stops a reply."


class Conversation:
    """The messages so far. When they outgrow the context, the oldest exchanges are dropped (never the system
    prompt or the newest message), as training truncates long conversations."""

    def __init__(self, engine, system_prompt: str | None, max_new_tokens: int):
        self.engine, self.max_new_tokens = engine, max_new_tokens
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.turns: list[dict] = []

    def clear(self) -> None:
        self.turns = []

    def prompt(self) -> tuple[list[int], int]:
        """Token ids to continue and the reply's token budget; drops old exchanges that do not fit."""
        while True:
            ids = prompt_ids(self.engine.tokenizer, self.system + self.turns)
            room = self.engine.context_length - len(ids)
            if room >= min(self.max_new_tokens, 16) or len(self.turns) <= 1:
                break
            self.turns = self.turns[2:]  # the oldest user message and its reply
            print("(the conversation outgrew the context: its oldest exchange was dropped)", file=sys.stderr)
        return ids, self.engine.check_fits(len(ids), min(self.max_new_tokens, max(room, 1)))

    def reply(self, user_text: str, params: SamplingParams, out=sys.stdout) -> str:
        """Add the user's message, stream the reply to `out`, and keep it in the conversation."""
        self.turns.append({"role": "user", "content": user_text})
        try:
            ids, budget = self.prompt()
        except RequestError:
            self.turns.pop()
            raise
        params.max_tokens = budget
        parts: list[str] = []
        try:
            for text in self.engine.stream(ids, params):
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


def run_chat(cfg: ServeConfig) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    engine = load_engine(cfg)
    chat = Conversation(engine, cfg.serve.system_prompt, cfg.generation.max_new_tokens)
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
                print("(a new conversation)")
                continue
            if not text:
                continue
            if text.startswith("/") and " " not in text:
                print(f"Unknown command {text}. {HELP}")
                continue
            print("Assistant: ", end="", flush=True)
            try:
                chat.reply(text, SamplingParams.from_generation(cfg.generation))
            except RequestError as err:
                print(f"\n(error: {err} Use /clear to start over.)")
    finally:
        engine.close()
    print("\nBye.")
