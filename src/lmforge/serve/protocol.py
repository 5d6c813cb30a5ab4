"""OpenAI request bodies, validated: anything out of range is a 400 naming the field before any work starts.

Fields OpenAI clients send that do not change what is generated (`user`, `metadata`, ...) are accepted and ignored;
fields whose effect a client would rely on but lmforge does not provide (`logprobs`, `suffix`) are rejected.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_CHOICES = 16
MAX_STOP_STRINGS = 16
INT64 = (-(2**63), 2**63 - 1)  # the range of a seed (OpenAI's and torch's)
MAX_TOP_LOGPROBS = 20  # OpenAI's bound
MAX_LOGIT_BIAS = 300  # OpenAI's bound on the entries of logit_bias


class ContentPart(BaseModel):
    """A text part, or (vision-language models) an image as `{"type": "image_url", "image_url": {"url": ...}}` with a
    data: or http(s) URL."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: dict[str, Any] | str | None = None

    @field_validator("image_url")
    @classmethod
    def _remote_or_inline(cls, value: dict[str, Any] | str | None) -> dict[str, Any] | str | None:
        url = value.get("url") if isinstance(value, dict) else value
        if value is not None and not (isinstance(url, str) and url.startswith(("data:", "http://", "https://"))):
            raise ValueError("image_url.url must be a data: URL or an http(s) URL")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """What chat and text completions share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # numbers are bounded where sampling stays numerically safe; NaN and Infinity (which Python's JSON parser
    # accepts) are refused
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, ge=0.01, le=100.0, allow_inf_nan=False)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = Field(None, ge=INT64[0], le=INT64[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # token id (as a string, OpenAI's JSON form) -> a bias from -100 (never) to 100 (always) added to its logit
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are supported")
        return [s for s in stops if s]

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if len(value or {}) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens can be biased")
        for token, bias in (value or {}).items():
            if not token.isdigit():
                raise ValueError(f"keys are token ids (whole numbers as strings), got '{token[:40]}'")
            if not -100.0 <= bias <= 100.0:  # also refuses NaN
                raise ValueError(f"the bias of token {token} is {bias}; biases go from -100 to 100")
        return value

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value:
            raise ValueError("logprobs are not supported by this server")
        return value

    @property
    def requested_tokens(self) -> tuple[int | None, str]:
        """max_completion_tokens (the newer name) or max_tokens, and which was given."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# Arguments of `apply_chat_template` itself: a client must not set them through chat_template_kwargs (a template of
# its own would run server-side Jinja of the client's choosing; the others change what is rendered or returned).
RESERVED_TEMPLATE_KWARGS = frozenset({
    "chat_template", "tools", "documents", "messages", "conversation", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict",
    "return_assistant_tokens_mask", "tokenizer_kwargs", "processor_kwargs"})


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    chat_template_kwargs: dict[str, str | int | float | bool | None] | None = None

    @field_validator("chat_template_kwargs")
    @classmethod
    def _plain_template_variables(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Only plain variables for the server's template (e.g. enable_thinking), never a template or tools."""
        for key in value or {}:
            if key in RESERVED_TEMPLATE_KWARGS or not key.isidentifier():
                raise ValueError(f"'{key}' cannot be set through chat_template_kwargs (only plain template "
                                 f"variables such as enable_thinking)")
        return value


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> None:
        if value:
            raise ValueError("suffix (insertion) is not supported by this server")
        return None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if value == [] or value == "" or (isinstance(value, list) and any(p in ("", []) for p in value)):
            raise ValueError("the prompt must not be empty")
        return value

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
