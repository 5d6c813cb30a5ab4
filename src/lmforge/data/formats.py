"""Conversation records in alpaca, sharegpt and openai layouts -> one schema: `messages` (+ `tools`).

Column and tag names follow LLaMA-Factory's dataset_info.json (`formatting`, `columns`, `tags`, `ranking`), so its
registries load unchanged. The output schema is the one chat templates take: messages with role
system/user/assistant/tool, string content, and `tool_calls` on assistant turns that call functions. Each stage asks
for one kind of example (`ExampleKind`):

- `sft`: a whole conversation ending with the assistant.
- `pair` (rm, dpo): the prompt `messages` (ending with the user) plus the `chosen` and `rejected` replies, each a
  list of assistant (and tool) messages.
- `kto`: a whole conversation plus its boolean `label` (desirable or not).
- `prompt` (ppo, grpo): the prompt `messages` plus the dataset's `reference` answer when it has one (its answer turn,
  or a `REFERENCE_COLUMNS` column) and the record's other `columns` (tests, solutions) for the reward functions.
- `steps` (prm): the prompt `messages` plus the reply as `steps` (texts) and one true/false `step_labels` entry per
  step (TRL's stepwise-supervision layout: `prompt`, `completions`, `labels`).

A record that cannot be such an example is skipped with a reason; skips are counted and reported, never silent.
"""

from __future__ import annotations

import json
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from lmforge.data import media
from lmforge.data.skips import SkipRecord
from lmforge.jsonl import json_text

Formatting = Literal["alpaca", "sharegpt", "openai"]
ExampleKind = Literal["sft", "pair", "kto", "prompt", "steps"]

PAIR_COLUMNS = {"chosen": "chosen", "rejected": "rejected", "kto_tag": "label", "images": "images", "videos": "videos",
                "completions": "completions", "step_labels": "labels"}
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                  "history": "history", "tools": "tools", **PAIR_COLUMNS}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools", **PAIR_COLUMNS}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
# Where a prompt record without an answer turn keeps its reference answer (TRL's math sets: `solution`; GSM8K: `answer`)
REFERENCE_COLUMNS = ("reference", "solution", "answer", "ground_truth", "final_answer")
OPENAI_COLUMNS = {"messages": "messages", "system": "system", "tools": "tools", **PAIR_COLUMNS}
OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"}


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
        if "chosen_messages" in columns and "rejected_messages" in columns:  # LLaMA-Factory v1 pairs
            return cls.from_entry({"formatting": "openai", "columns": {
                "chosen": "chosen_messages", "rejected": "rejected_messages"}})
        if "messages" in columns:
            return cls.from_entry({"formatting": "openai"})
        if "conversations" in columns:
            return cls.from_entry({"formatting": "sharegpt"})
        if "instruction" in columns:
            return cls.from_entry({})
        if "prompt" in columns:  # TRL layout: prompt (+ chosen/rejected or completion), as text or messages
            return cls.from_entry({"formatting": "openai", "columns": {"messages": "prompt"}})
        if "chosen" in columns and "rejected" in columns:  # two whole conversations (Anthropic HH style)
            return cls.from_entry({"formatting": "openai"})
        return None

    def to_example(self, record: dict[str, Any], kind: ExampleKind = "sft") -> dict[str, Any]:
        """One example of `kind` (see the module docstring), or SkipRecord saying why the record cannot be one.
        A multimodal record's example also has `images`/`videos` (references, one per placeholder)."""
        found: dict[str, list[str]] = {"images": [], "videos": []}  # media given as content parts
        token = _PART_MEDIA.set(found)
        try:
            example = self._example(record, kind)
        finally:
            _PART_MEDIA.reset(token)
        for key in found:
            listed = record.get(self.columns.get(key, key))
            if listed not in (None, [], "") and found[key]:
                raise SkipRecord(f"{key} are given both in '{self.columns.get(key, key)}' and as content parts")
            if listed not in (None, [], ""):
                listed = listed if isinstance(listed, list) else [listed]
                found[key] = [media.reference(v, f"'{self.columns.get(key, key)}' entry {j}")
                              for j, v in enumerate(listed)]
            if found[key]:
                example[key] = found[key]
        if "images" in example or "videos" in example:
            media.check_counts(example)
        return example

    def _example(self, record: dict[str, Any], kind: ExampleKind) -> dict[str, Any]:
        tools = _tools(record.get(self.columns.get("tools", "tools")))
        if kind == "pair":
            return {**self._pair(record), "tools": tools}
        if kind == "steps":
            messages, _ = self._prompt(record)
            return {"messages": messages, "tools": tools, **self._steps(record)}
        if kind == "prompt":
            messages, reference = self._prompt(record)
            columns = self._other_columns(record)
            if reference is None:  # TRL's and the reasoning sets' layouts keep the answer in a column of its own
                reference = next((str(columns[k]) for k in REFERENCE_COLUMNS
                                  if isinstance(columns.get(k), str | int | float) and str(columns[k]).strip()), None)
            return {"messages": messages, "tools": tools, "reference": reference, "columns": columns}
        messages = self._conversation(record)
        _check_turns(messages)
        example = {"messages": messages, "tools": tools}
        if kind == "kto":
            example["label"] = _kto_label(record, self.columns["kto_tag"])
        return example

    def _steps(self, record: dict[str, Any]) -> dict[str, Any]:
        """The reply's steps and their labels (TRL's `completions` and `labels`: true for a correct step)."""
        names = self.columns["completions"], self.columns["step_labels"]
        steps, labels = record.get(names[0]), record.get(names[1])
        if not isinstance(steps, list) or not steps:
            raise SkipRecord(f"'{names[0]}' must be a non-empty list of step texts")
        if not all(isinstance(step, str) and step.strip() for step in steps):
            raise SkipRecord(f"'{names[0]}' holds a step that is not text or is empty")
        if not isinstance(labels, list) or len(labels) != len(steps):
            raise SkipRecord(f"'{names[1]}' must be a list with one label per step ({len(steps)})")
        if not all(label in (True, False) for label in labels):  # bool, or 0/1
            raise SkipRecord(f"'{names[1]}' holds a label that is not true/false: "
                             f"{next(x for x in labels if x not in (True, False))!r}")
        return {"steps": steps, "step_labels": [bool(label) for label in labels]}

    def _other_columns(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record's columns the layout does not read (`tests`, `solution`, ...), for the reward functions: those
        JSON can hold (they travel with the example)."""
        used = set(self.columns.values())
        out = {}
        for key, value in record.items():
            if key in used or key.startswith("_"):
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue
            out[key] = value
        return out

    def _conversation(self, record: dict[str, Any]) -> list[dict]:
        if self.formatting == "alpaca":
            return _alpaca_prompt(record, self.columns) + _alpaca_response(record, self.columns["response"])
        return _sharegpt(record, self.columns, self.tags)

    def _prompt(self, record: dict[str, Any]) -> tuple[list[dict], str | None]:
        """The prompt messages, and the reference answer when the record has one (last assistant turn or `output`)."""
        if self.formatting == "alpaca":
            messages = _alpaca_prompt(record, self.columns)
            response = record.get(self.columns["response"])
            reference = response if isinstance(response, str) and response else None
        else:
            messages = _sharegpt(record, self.columns, self.tags)
            reference = None
            if messages and messages[-1]["role"] == "assistant":
                reference = messages.pop()["content"] or None
        _check_turns(messages, complete=False)
        return messages, reference

    def _pair(self, record: dict[str, Any]) -> dict[str, Any]:
        """Prompt, chosen and rejected replies. The replies may be text, one message, the reply messages, or whole
        conversations; in the last case the messages both share become part of the prompt."""
        cols = self.columns
        if self.formatting == "alpaca":
            prompt = _alpaca_prompt(record, cols)
        elif cols["messages"] in record or cols.get("system", "system") in record:
            prompt = _sharegpt(record, cols, self.tags, allow_empty=True)
        else:
            prompt = []
        chosen, rejected = record.get(cols["chosen"]), record.get(cols["rejected"])
        response = record.get(cols.get("response", ""))
        if chosen is None and rejected is None and isinstance(response, list) and len(response) == 2:
            chosen, rejected = response  # older alpaca ranking data: `output: [chosen, rejected]`
        replies = []
        for value, name in ((chosen, cols["chosen"]), (rejected, cols["rejected"])):
            if value in (None, "", [], {}):
                raise SkipRecord(f"'{name}' is missing or empty")
            replies.append(_reply_messages(value, self.tags, f"'{name}'"))
        chosen, rejected = replies
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if chosen[0]["role"] != "assistant" or shared:  # whole conversations: their common start is prompt
            prompt, chosen, rejected = prompt + chosen[:shared], chosen[shared:], rejected[shared:]
        if not prompt:
            raise SkipRecord("the prompt is empty")
        _check_turns(prompt, complete=False)
        _check_turns(prompt + chosen)
        _check_turns(prompt + rejected)
        if chosen == rejected:
            raise SkipRecord("chosen and rejected are identical")
        return {"messages": prompt, "chosen": chosen, "rejected": rejected}


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SkipRecord(f"{what} must be a string, got {type(value).__name__}")
    return value


def _alpaca_prompt(record: dict[str, Any], columns: dict[str, str]) -> list[dict]:
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
    return messages


def _alpaca_response(record: dict[str, Any], column: str) -> list[dict]:
    response = record.get(column)
    if isinstance(response, list):  # ranking data keeps a list of responses; SFT takes the first
        response = response[0] if response else None
    return [{"role": "assistant", "content": _text(response, f"'{column}'")}]


def _kto_label(record: dict[str, Any], column: str) -> bool:
    value = record.get(column)
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise SkipRecord(f"'{column}' must be true or false (desirable or not), got {value!r}")


def _reply_messages(value: Any, tags: dict[str, str], what: str) -> list[dict]:
    """A chosen/rejected reply as messages: text, one message, or a list of messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise SkipRecord(f"{what} must be text, a message or a list of messages")
    messages = _parse_turns(value, tags, what)
    if not messages:
        raise SkipRecord(f"{what} has no messages")
    return messages


# The media lists of the record being normalised: content parts append to them (see `to_example`).
_PART_MEDIA: ContextVar[dict[str, list[str]] | None] = ContextVar("_PART_MEDIA", default=None)


def _parts(value: list, what: str) -> tuple[str, str, list[dict]]:
    """Content given as typed parts (LLaMA-Factory v1 `{"type", "value"}` or OpenAI `{"type": "text", "text"}`):
    (text, reasoning, tool calls). Image and video parts become placeholders in the text (`data/media.py`)."""
    text, reasoning, calls = [], [], []
    for part in value:
        if not isinstance(part, dict) or "type" not in part:
            raise SkipRecord(f"{what}: a content part must be an object with a 'type'")
        body = part.get("value", part.get("text"))
        found = _PART_MEDIA.get()
        if part["type"] in media.PART_TYPES and found is not None:
            key = media.PART_TYPES[part["type"]]
            found[key].append(media.part_reference(part, what))
            text.append(media.PLACEHOLDERS[key])
        elif part["type"] == "text":
            text.append(_text(body, what))
        elif part["type"] in ("reasoning", "thinking"):
            reasoning.append(_text(body, what))
        elif part["type"] == "tool_call":
            calls += _tool_calls(body if isinstance(body, str) else json.dumps(body))
        else:
            raise SkipRecord(f"{what}: content part type '{part['type']}' is not supported (text, reasoning, "
                             "tool_call, image_url, image, video)")
    return "".join(text), "\n".join(reasoning), calls


def _tool_calls(value: str) -> list[dict]:
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as err:
        raise SkipRecord(f"function call is not valid JSON ({err.msg})") from None
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            raise SkipRecord("a function call needs a 'name' (text)")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def _sharegpt(record: dict[str, Any], columns: dict[str, str], tags: dict[str, str],
              allow_empty: bool = False) -> list[dict]:
    turns = record.get(columns["messages"])
    if isinstance(turns, str):  # a plain-text prompt (TRL's `prompt` column)
        turns = [{tags["role_tag"]: tags["user_tag"], tags["content_tag"]: turns}]
    if turns is None and allow_empty:
        turns = []
    if not isinstance(turns, list) or not (turns or allow_empty):
        raise SkipRecord(f"'{columns['messages']}' must be a non-empty list of messages")
    system = record.get(columns.get("system", "system"))
    head = [{"role": "system", "content": _text(system, f"'{columns.get('system')}'")}] if system else []
    messages = _parse_turns(turns, tags, "", first_system=not head)
    return head + messages


def _parse_turns(turns: list, tags: dict[str, str], what: str, first_system: bool = True) -> list[dict]:
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "tool",
             tags["function_tag"]: "function_call", tags["system_tag"]: "system"}
    where = f"{what} " if what else ""
    messages: list[dict] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise SkipRecord(f"{where}message {i} is not an object")
        tag = turn.get(tags["role_tag"])
        if not isinstance(tag, str) or tag not in roles:
            raise SkipRecord(f"{where}message {i} has role '{tag}' (expected one of {', '.join(map(str, roles))})")
        role = roles[tag]
        raw = turn.get(tags["content_tag"])
        reasoning, calls = _text(turn.get("reasoning_content"), f"message {i} 'reasoning_content'"), []
        if isinstance(raw, list):
            content, parts_reasoning, calls = _parts(raw, f"{where}message {i}")
            reasoning = reasoning or parts_reasoning
        else:
            content = _text(raw, f"{where}message {i} '{tags['content_tag']}'")
        if role == "assistant" and turn.get("tool_calls"):
            listed = turn["tool_calls"]
            if not isinstance(listed, list) or not all(isinstance(c, dict) for c in listed):
                raise SkipRecord(f"{where}message {i} 'tool_calls' must be a list of objects")
            calls += _tool_calls(json.dumps([c.get("function", c) for c in listed]))
        if role == "assistant":
            message = {"role": "assistant", "content": content}
            if reasoning:
                message["reasoning_content"] = reasoning
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
        elif calls:
            raise SkipRecord(f"{where}message {i}: only the assistant makes tool calls")
        elif role == "function_call":
            messages.append({"role": "assistant", "content": "", "tool_calls": _tool_calls(content)})
        elif role == "system" and i == 0 and first_system:
            messages.append({"role": "system", "content": content})
        elif role == "system":
            raise SkipRecord(f"{where}message {i}: a system message may only come first")
        else:
            messages.append({"role": role, "content": content})
    return messages


def _check_turns(messages: list[dict], complete: bool = True) -> None:
    """After an optional system message: user turns (or tool results: several in a row answer parallel calls) and
    assistant turns alternate, starting with the user and ending with the assistant (`complete`) or with the user
    or tool results (a prompt); no turn is empty."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if len(turns) < (2 if complete else 1):
        raise SkipRecord("needs at least one user turn and one assistant turn" if complete
                         else "the prompt has no user turn")
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
    if complete and turns[-1]["role"] != "assistant":
        raise SkipRecord("the last turn must be the assistant's")
    if not complete and turns[-1]["role"] == "assistant":
        raise SkipRecord("the prompt must end with a user turn (or tool results), not the assistant's")


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


def normalise_records(records: list, fmt: ConversationFormat, source: str,
                      kind: ExampleKind = "sft") -> tuple[list[tuple[int, dict]], SkipReport]:
    """(record index, example of `kind`) for every record that can be one; the others are skipped and reported."""
    report = SkipReport(source)
    out = []
    for index, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise SkipRecord("record is not an object")
            example = fmt.to_example(record, kind)
            _check_unicode(example)
            out.append((index, example))
        except SkipRecord as err:
            report.add(index, str(err))
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as err:
            # a shape the checks above did not foresee (fuzzed or hand-edited data): counted, never a crash
            report.add(index, f"malformed record ({type(err).__name__}: {str(err)[:80]})")
    return out, report


def _check_unicode(example: dict) -> None:
    """Valid JSON can escape a lone surrogate (`"\\ud800"`), which is no character: nothing downstream (Arrow,
    the tokenizer) can encode it."""
    try:
        json_text(example)
    except UnicodeEncodeError as err:
        raise SkipRecord(f"text holds invalid Unicode (a lone surrogate U+{ord(err.object[err.start]):04X})") from None
