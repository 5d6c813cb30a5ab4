"""Just enough of Go's text/template to execute an Ollama TEMPLATE as Ollama would (for tests): text, `{{ .Field }}`,
string literals, `if`/`else if`/`else`/`end`, `range`, and the functions `and`, `or`, `not`, `eq`, `ne`, `index`,
with `{{-`/`-}}` trimming. Anything else raises, so a Modelfile using more fails its test instead of passing."""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+)')


def _parse(source: str) -> list:
    """Text and actions -> a tree of ("text", s) / ("out", expr) / ("if", [(cond, body)...], else) / ("range", ...)."""
    items: list[tuple[str, str]] = []
    pos = 0
    for match in _ACTION.finditer(source):
        text = source[pos:match.start()]
        if match.group(1):
            text = text.rstrip()
        items.append(("text", text))
        items.append(("action", match.group(2)))
        pos = match.end()
        if match.group(3):
            rest = source[pos:]
            pos += len(rest) - len(rest.lstrip())
    items.append(("text", source[pos:]))
    tree, index = _block(items, 0)
    if index != len(items):
        raise ValueError("unexpected {{ end }}")
    return tree


def _block(items: list, i: int) -> tuple[list, int]:
    nodes: list = []
    while i < len(items):
        kind, value = items[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
        elif value == "end" or value == "else" or value.startswith("else if "):
            return nodes, i
        elif value.startswith("if "):
            branches, otherwise = [], []
            condition = value[3:]
            while True:
                body, i = _block(items, i + 1)
                branches.append((condition, body))
                action = items[i][1]
                if action.startswith("else if "):
                    condition = action[8:]
                    continue
                if action == "else":
                    otherwise, i = _block(items, i + 1)
                break
            if items[i][1] != "end":
                raise ValueError("if without end")
            nodes.append(("if", branches, otherwise))
            i += 1
        elif value.startswith("range "):
            body, i = _block(items, i + 1)
            if items[i][1] != "end":
                raise ValueError("range without end")
            nodes.append(("range", value[6:], body))
            i += 1
        else:
            nodes.append(("out", value))
            i += 1
    return nodes, i


def _tokens(expr: str) -> list[str]:
    return [t for t in _TOKEN.findall(expr) if t]


def _evaluate(tokens: list[str], dot: Any, root: Any) -> Any:
    value, rest = _term(tokens, dot, root)
    if rest:
        raise ValueError(f"unparsed {rest}")
    return value


def _term(tokens: list[str], dot: Any, root: Any) -> tuple[Any, list[str]]:
    """A pipeline of one function call or one operand."""
    head, rest = tokens[0], tokens[1:]
    functions = {"and": lambda *a: all(a), "or": lambda *a: any(a), "not": lambda a: not a,
                 "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "index": lambda a, i: a[i]}
    if head in functions:
        args = []
        while rest and rest[0] != ")":
            arg, rest = _operand(rest, dot, root)
            args.append(arg)
        return functions[head](*args), rest
    return _operand(tokens, dot, root)


def _operand(tokens: list[str], dot: Any, root: Any) -> tuple[Any, list[str]]:
    head, rest = tokens[0], tokens[1:]
    if head == "(":
        value, rest = _term(rest, dot, root)
        if not rest or rest[0] != ")":
            raise ValueError("missing )")
        rest = rest[1:]
        if rest and rest[0].startswith("."):  # (index .Messages 0).Role
            value, rest = _field(value, rest[0]), rest[1:]
        return value, rest
    if head.startswith('"'):
        return bytes(head[1:-1], "utf-8").decode("unicode_escape"), rest
    if re.fullmatch(r"-?\d+", head):
        return int(head), rest
    if head.startswith("."):
        return _field(dot, head), rest
    raise ValueError(f"unsupported template element {head!r}")


def _field(value: Any, path: str) -> Any:
    for name in [p for p in path.split(".") if p]:
        value = value[name]
    return value


def _run(nodes: list, dot: Any, root: Any) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_evaluate(_tokens(node[1]), dot, root)))
        elif node[0] == "if":
            for condition, body in node[1]:
                if _evaluate(_tokens(condition), dot, root):
                    out.append(_run(body, dot, root))
                    break
            else:
                out.append(_run(node[2], dot, root))
        else:
            for item in _evaluate(_tokens(node[1]), dot, root):
                out.append(_run(node[2], item, root))
    return "".join(out)


def execute(template: str, messages: list[dict]) -> str:
    """What Ollama's template produces for `messages` (`.Messages` entries with `.Role` and `.Content`)."""
    data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    return _run(_parse(template), data, data)
