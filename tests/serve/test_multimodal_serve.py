"""A vision-language model behind `lmforge api`: the real `openai` client sends an image as a data URL and gets the
same greedy answer transformers' own generate gives for that image; a bad image is a 400."""

from __future__ import annotations

import base64

import openai
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from lmforge.data import media
from lmforge.data.template import stop_token_ids
from tests.conftest import LF_DEMO
from tests.serve.test_api import start_server

pytestmark = pytest.mark.slow  # servers

IMAGE = LF_DEMO / "mllm_demo_data" / "2.jpg"


@pytest.fixture(scope="module")
def vlm_server(llava_dir):
    proc, base = start_server(llava_dir, "served_model_name=tiny-vlm")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def data_url(path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


@torch.no_grad()
def direct_answer(model_dir: str, question: str, max_new_tokens: int) -> str:
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    image = media.load_image(str(IMAGE), 768 * 768, 32 * 32)
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": question}, {"type": "image", "image": image}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=stop_token_ids(processor.tokenizer))
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_an_image_request_gets_the_answer_generate_gives_for_that_image(vlm_server, llava_dir):
    client = openai.OpenAI(base_url=vlm_server + "/v1", api_key="none")
    question = "Who is he?"
    reply = client.chat.completions.create(model="tiny-vlm", max_tokens=12, temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": question},
                                     {"type": "image_url", "image_url": {"url": data_url(IMAGE)}}]}])
    expected = direct_answer(llava_dir, question, 12)
    assert reply.choices[0].message.content == expected and expected
    assert reply.usage.prompt_tokens > 4  # the image's tokens count
    # the same model answers text-only requests too
    text = client.chat.completions.create(model="tiny-vlm", max_tokens=4, temperature=0,
                                          messages=[{"role": "user", "content": "Hello"}])
    assert text.choices[0].finish_reason in ("stop", "length")


def test_a_bad_image_is_a_400_naming_it(vlm_server):
    client = openai.OpenAI(base_url=vlm_server + "/v1", api_key="none")
    with pytest.raises(openai.BadRequestError, match="cannot be read"):
        client.chat.completions.create(model="tiny-vlm", max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    with pytest.raises(openai.BadRequestError, match="data: URL or an http"):
        client.chat.completions.create(model="tiny-vlm", max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}])
