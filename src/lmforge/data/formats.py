"""Conversation records in alpaca, sharegpt and openai layouts -> one schema: `messages` (+ `tools`).

Column and tag names follow LLaMA-Factory's dataset_info.json (`formatting`, `columns`, `tags`), so its registries
load unchanged. The output schema is the one chat templates take: messages with role system/user/assistant/tool,
string content, and `tool_calls` on assistant turns that call functions. A record that cannot be a training
conversation is skipped with a reason; skips are counted and reported, never silent.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

Formatting = Literal["alpaca", "sharegpt", "openai"]

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                  "history": "history", "tools": "tools"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
OPENAI_COLUMNS = {"messages": "messages", "system": "system", "tools": "tools"}
OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"}


class SkipRecord(ValueError):
    """This record cannot be a training conversation; the message says why."""


@dataclass
class ConversationFormat:
    """How one source lays out its conversations (from its dataset_info.json entry, or defaults)."""

    formatting: Formatting = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> ConversationFormat:
        formatting = entry.get("formatting", "alpaca")
        if formatting not in ("alpaca", "sharegpt", "openai"):
            raise ValueError(f"formatting '{formatting}' is not one of alpaca, sharegpt, openai")
        defaults = {"alpaca": ALPACA_COLUMNS, "sharegpt": SHAREGPT_COLUMNS, "openai": OPENAI_COLUMNS}[formatting]
        tag_defaults = OPENAI_TAGS if formatting == "openai" else SHAREGPT_TAGS
        columns = {**defaults, **(entry.get("columns") or {})}
        return cls(formatting, columns, {**tag_defaults, **(entry.get("tags") or {})})

    @classmethod
    def detect(cls, columns: list[str]) -> ConversationFormat | None:
        """The layout of a source that has no dataset_info.json entry, from its columns (None: not conversations)."""
        if "messages" in columns:
            return cls.from_entry({"formatting": "openai"})
        if "conversations" in columns:
            return cls.from_entry({"formatting": "sharegpt"})
        if "instruction" in columns:
            return cls.from_entry({})
        return None

    def required_columns(self) -> list[str]:
        return [self.columns["prompt"]] if self.formatting == "alpaca" else [self.columns["messages"]]

    def to_messages(self, record: dict[str, Any]) -> dict[str, Any]:
        """{"messages": [...], "tools": list | None}, or SkipRecord."""
        if self.formatting == "alpaca":
            messages = _alpaca(record, self.columns)
        else:
            messages = _sharegpt(record, self.columns, self.tags)
        _check_turns(messages)
        return {"messages": messages, "tools": _tools(record.get(self.columns.get("tools", "tools")))}


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SkipRecord(f"{what} must be a string, got {type(value).__name__}")
    return value


def _alpaca(record: dict[str, Any], columns: dict[str, str]) -> list[dict]:
    messages = []
    system = _text(record.get(columns["system"]), f"'{columns['system']}'")
    if system:
        messages.append({"role": "system", "content": system})
    history = record.get(columns["history"]) or []
    if not isinstance(history, list):
        raise SkipRecord(f"'{columns['history']}' must be a list of [prompt, response] pairs")
    for turn in history:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise SkipRecord(f"'{columns['history']}' must be a list of [prompt, response] pairs")
        messages += [{"role": "user", "content": _text(turn[0], "history prompt")},
                     {"role": "assistant", "content": _text(turn[1], "history response")}]
    prompt = _text(record.get(columns["prompt"]), f"'{columns['prompt']}'")
    query = _text(record.get(columns["query"]), f"'{columns['query']}'")
    messages.append({"role": "user", "content": "\n".join(p for p in (prompt, query) if p)})
    response = record.get(columns["response"])
    if isinstance(response, list):  # ranking data keeps a list of responses; SFT takes the first
        response = response[0] if response else None
    messages.append({"role": "assistant", "content": _text(response, f"'{columns['response']}'")})
    return messages


def _parts(value: list, what: str) -> tuple[str, str, list[dict]]:
    """Content given as typed parts (LLaMA-Factory v1 `{"type", "value"}` or OpenAI `{"type": "text", "text"}`):
    (text, reasoning, tool calls)."""
    text, reasoning, calls = [], [], []
    for part in value:
        if not isinstance(part, dict) or "type" not in part:
            raise SkipRecord(f"{what}: a content part must be an object with a 'type'")
        body = part.get("value", part.get("text"))
        if part["type"] == "text":
            text.append(_text(body, what))
        elif part["type"] in ("reasoning", "thinking"):
            reasoning.append(_text(body, what))
        elif part["type"] == "tool_call":
            calls += _tool_calls(body if isinstance(body, str) else json.dumps(body))
        else:
            raise SkipRecord(f"{what}: content part type '{part['type']}' is not supported (text, reasoning, "
                             "tool_call)")
    return "".join(text), "\n".join(reasoning), calls


def _tool_calls(value: str) -> list[dict]:
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as err:
        raise SkipRecord(f"function call is not valid JSON ({err.msg})") from None
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not isinstance(call, dict) or "name" not in call:
            raise SkipRecord("a function call needs a 'name'")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def _sharegpt(record: dict[str, Any], columns: dict[str, str], tags: dict[str, str]) -> list[dict]:
    turns = record.get(columns["messages"])
    if not isinstance(turns, list) or not turns:
        raise SkipRecord(f"'{columns['messages']}' must be a non-empty list of messages")
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "tool",
             tags["function_tag"]: "function_call", tags["system_tag"]: "system"}
    messages = []
    system = record.get(columns.get("system", "system"))
    if system:
        messages.append({"role": "system", "content": _text(system, f"'{columns.get('system')}'")})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise SkipRecord(f"message {i} is not an object")
        tag = turn.get(tags["role_tag"])
        if tag not in roles:
            raise SkipRecord(f"message {i} has role '{tag}' (expected one of {', '.join(map(str, roles))})")
        role = roles[tag]
        raw = turn.get(tags["content_tag"])
        reasoning, calls = _text(turn.get("reasoning_content"), f"message {i} 'reasoning_content'"), []
        if isinstance(raw, list):
            content, parts_reasoning, calls = _parts(raw, f"message {i}")
            reasoning = reasoning or parts_reasoning
        else:
            content = _text(raw, f"message {i} '{tags['content_tag']}'")
        if role == "assistant" and turn.get("tool_calls"):
            calls += _tool_calls(json.dumps([c.get("function", c) for c in turn["tool_calls"]]))
        if role == "assistant":
            message = {"role": "assistant", "content": content}
            if reasoning:
                message["reasoning_content"] = reasoning
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
        elif calls:
            raise SkipRecord(f"message {i}: only the assistant makes tool calls")
        elif role == "function_call":
            messages.append({"role": "assistant", "content": "", "tool_calls": _tool_calls(content)})
        elif role == "system" and i == 0 and not messages:
            messages.append({"role": "system", "content": content})
        elif role == "system":
            raise SkipRecord(f"message {i}: a system message may only come first")
        else:
            messages.append({"role": role, "content": content})
    return messages


def _check_turns(messages: list[dict]) -> None:
    """After an optional system message: user turns (or tool results: several in a row answer parallel calls) and
    assistant turns alternate, starting with the user and ending with the assistant; no turn is empty."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if len(turns) < 2:
        raise SkipRecord("needs at least one user turn and one assistant turn")
    expect_user = True
    for i, message in enumerate(turns):
        role = message["role"]
        if role == "tool" and i and turns[i - 1]["role"] == "tool":
            continue
        expected = ("user", "tool") if expect_user else ("assistant",)
        if role not in expected:
            raise SkipRecord(f"turn {i} is '{role}' where {' or '.join(expected)} was expected "
                             "(turns must alternate user/assistant)")
        if not message["content"].strip() and not message.get("tool_calls") and not message.get("reasoning_content"):
            raise SkipRecord(f"turn {i} ({role}) is empty")
        expect_user = not expect_user
    if turns[0]["role"] != "user":
        raise SkipRecord("the first turn must be the user's")
    if turns[-1]["role"] != "assistant":
        raise SkipRecord("the last turn must be the assistant's")


def _tools(value: Any) -> list[dict] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise SkipRecord(f"tools is not valid JSON ({err.msg})") from None
    if not isinstance(value, list):
        value = [value]
    return [t if "type" in t else {"type": "function", "function": t} for t in value if isinstance(t, dict)] or None


@dataclass
class SkipReport:
    """Skipped records of one source, by reason, with the first few record indices of each."""

    source: str
    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)

    def add(self, index: int, reason: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(index)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        parts = [f"{n} × {reason} (records {', '.join(map(str, self.examples[reason]))}"
                 f"{', ...' if n > len(self.examples[reason]) else ''})" for reason, n in self.reasons.most_common()]
        return f"{self.source}: skipped {self.total} records: " + "; ".join(parts)


def normalise_records(records: list, fmt: ConversationFormat, source: str) -> tuple[list[tuple[int, dict]], SkipReport]:
    """(record index, {"messages", "tools"}) for every record that can be a conversation; the others are skipped
    and reported."""
    report = SkipReport(source)
    out = []
    for index, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise SkipRecord("record is not an object")
            out.append((index, fmt.to_messages(record)))
        except SkipRecord as err:
            report.add(index, str(err))
    return out, report
