"""Tool calls as models trained on chat templates write them: `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
(Qwen, Hermes and lmforge's built-in templates). Read back into OpenAI's `tool_calls` (the API's replies, RL rollouts
that call tools)."""

from __future__ import annotations

import json
import re
import uuid

_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """Split a completion into its plain content and the OpenAI `tool_calls` it wrote (none when no block parses:
    then the text is returned whole, so nothing the model wrote is lost)."""
    calls = []
    for match in _CALL.finditer(text):
        try:
            value = json.loads(match.group(1))
        except json.JSONDecodeError:
            return text, []
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return text, []
        arguments = value.get("arguments", value.get("parameters", {}))
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": value["name"],
                                   "arguments": arguments if isinstance(arguments, str) else json.dumps(
                                       arguments, ensure_ascii=False)}})
    if not calls:
        return text, []
    content = _CALL.sub("", text).strip()
    return content or None, calls
