"""`lmforge chat` driven through a pseudo-terminal: a streamed reply that stops at the end of turn, /clear, /exit."""

from __future__ import annotations

import io
import sys

import pexpect
import pytest

from lmforge.config.parse import load_command_config
from lmforge.model.sampling import SamplingParams
from lmforge.serve.chat import Conversation
from lmforge.serve.load import load_engine
from tests.conftest import GREETING, REPLY

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


def test_chat_in_a_terminal(greeter_dir):
    child = pexpect.spawn(sys.executable, ["-m", "lmforge", "chat", greeter_dir, "do_sample=false",
                                           "system_prompt=You are a greeter."], encoding="utf-8", timeout=120)
    transcript = io.StringIO()
    child.logfile_read = transcript
    try:
        child.expect_exact("User: ")
        child.sendline(GREETING)
        child.expect_exact(f"Assistant: {REPLY}\r\n")  # the whole reply, then the end of turn (no runaway text)
        child.expect_exact("User: ")
        child.sendline("/clear")
        child.expect_exact("(a new conversation)")
        child.expect_exact("User: ")
        child.sendline(GREETING)
        child.expect_exact(f"Assistant: {REPLY}\r\n")
        child.expect_exact("User: ")
        child.sendline("/exit")
        child.expect_exact("Bye.")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    conversation = transcript.getvalue().split("User: ", 1)[1]
    assert "Warning" not in conversation and "deprecated" not in conversation  # no library noise in replies


def test_conversation_keeps_history_and_drops_the_oldest_exchanges_that_no_longer_fit(greeter_dir, capsys):
    cfg = load_command_config("serve", None, [f"model_name_or_path={greeter_dir}", "max_model_len=80",
                                              "max_new_tokens=8", "system_prompt=Hi."])
    engine = load_engine(cfg)
    try:
        chat = Conversation(engine, cfg.serve.system_prompt, cfg.generation.max_new_tokens)
        greedy = SamplingParams(max_tokens=8, temperature=0)
        first = chat.reply(GREETING, greedy)
        assert first and REPLY.startswith(first)  # 8 tokens of the reply
        assert [m["role"] for m in chat.turns] == ["user", "assistant"]
        for _ in range(4):
            chat.reply(GREETING, SamplingParams(max_tokens=8, temperature=0))
        ids, budget, _ = chat.prompt()
        assert len(ids) + budget <= 80 and chat.turns[0]["role"] == "user"
        assert len(chat.turns) < 10  # old exchanges were dropped to fit 80 tokens
        assert "oldest exchange was dropped" in capsys.readouterr().err
    finally:
        engine.close()


def test_chat_needs_a_chat_template(tiny_model_dir):
    from lmforge.errors import ConfigError

    cfg = load_command_config("serve", None, [f"model_name_or_path={tiny_model_dir}"])
    with pytest.raises(ConfigError, match="has no chat template: set `template`"):
        load_engine(cfg)


def test_chat_image_command_with_a_vision_language_model(llava_dir):
    """/image PATH attaches the picture to the next message: the reply is the one transformers' generate gives for
    that image and question; a missing file is said at once and nothing is attached."""
    from tests.serve.test_multimodal_serve import IMAGE, direct_answer

    expected = direct_answer(llava_dir, "Who is he?", 6)
    child = pexpect.spawn(sys.executable, ["-m", "lmforge", "chat", llava_dir, "do_sample=false",
                                           "max_new_tokens=6"], encoding="utf-8", timeout=120)
    try:
        child.expect_exact("User: ")
        child.sendline("/image no/such/picture.jpg")
        child.expect_exact("(not attached: media file 'no/such/picture.jpg' not found")
        child.expect_exact("User: ")
        child.sendline(f"/image {IMAGE}")
        child.expect_exact("(image attached to your next message")
        child.expect_exact("User: ")
        child.sendline("Who is he?")
        child.expect_exact(f"Assistant: {expected}\r\n")
        child.expect_exact("User: ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_web_chat_turns_send_an_uploaded_image_to_a_vision_language_model(llava_dir, chat_model_dir):
    """The web chat's exchange: an uploaded image goes with the message (the reply is generate's for that image),
    stays in the conversation for the next turn, and a text model refuses it with a message."""
    from lmforge.errors import ConfigError
    from lmforge.serve.webui import chat_turn
    from tests.serve.test_multimodal_serve import IMAGE, direct_answer

    cfg = load_command_config("serve", None, [f"model_name_or_path={llava_dir}"])
    engine = load_engine(cfg)
    try:
        state = {"messages": [], "images": []}
        *_, reply = chat_turn(engine, state, "Who is he?", str(IMAGE), "", 0.0, 6)
        assert reply == direct_answer(llava_dir, "Who is he?", 6)
        assert state["images"] == [str(IMAGE)] and state["messages"][0]["content"] == "<image>Who is he?"
        *_, again = chat_turn(engine, state, "And now?", None, "", 0.0, 4)
        assert len(state["messages"]) == 4 and state["images"] == [str(IMAGE)]
    finally:
        engine.close()
    text_engine = load_engine(load_command_config("serve", None, [f"model_name_or_path={chat_model_dir}"]))
    try:
        with pytest.raises(ConfigError, match="takes text only"):
            list(chat_turn(text_engine, {"messages": [], "images": []}, "Hi", str(IMAGE), "", 0.0, 4))
    finally:
        text_engine.close()
