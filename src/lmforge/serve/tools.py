"""Tool calls between OpenAI's wire format and what chat templates render and models write.

Templates (and lmforge's built-ins) expect an assistant message's `tool_calls[].function.arguments` as a mapping,
while OpenAI clients send it as a JSON string. Models trained on those templates write calls as
`<tool_call>{"name": ..., "arguments": ...}</tool_call>` (Qwen, Hermes and lmforge's built-ins).
"""

from __future__ import annotations

import json


def template_message(message: dict) -> dict:
    """An OpenAI message as chat templates expect it: `developer` is a system message, text parts are joined, and
    tool-call arguments given as a JSON object string become a mapping."""
    message = {k: v for k, v in message.items() if v is not None}
    if message.get("role") == "developer":
        message["role"] = "system"
    if isinstance(message.get("content"), list):
        message["content"] = "".join(part.get("text") or "" for part in message["content"])
    calls = []
    for call in message.get("tool_calls") or []:
        function = dict(call.get("function") or {})
        if isinstance(function.get("arguments"), str):
            try:
                parsed = json.loads(function["arguments"])
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                function["arguments"] = parsed
        calls.append({**call, "function": function})
    if calls:
        message["tool_calls"] = calls
    return message


