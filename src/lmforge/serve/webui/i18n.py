"""The web UI in several languages: one YAML file per language in `resources/webui_locales/` (adding a language is
adding a file). Each holds `language` (its own name), `ui` (the page's labels and messages by id) and `config`
(a label and a help text per config key). English config help is the config's own help text (its one source); a
language without a text falls back to English.

Every translatable property of the page's components is registered (`Localized`), so switching the language on the
page updates them all at once; messages made while the page runs are translated with the page's language."""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Any

import yaml

DEFAULT_LANGUAGE = "en"
Text = str | tuple[str, str]  # a `ui` id, or ("label" | "help", a config key)


@functools.cache
def _locales() -> dict[str, dict[str, Any]]:
    folder = resources.files("lmforge") / "resources" / "webui_locales"
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            found[entry.name[: -len(".yaml")]] = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
    return found


def languages() -> dict[str, str]:
    """Language code -> its own name (English, 简体中文, ...)."""
    return {code: str(table.get("language", code)) for code, table in _locales().items()}


def pick_language(wanted: str | None, accept_language: str = "") -> str:
    """The language for a page: `?lang=` when it names one, else the browser's first match, else English."""
    available = languages()
    candidates = [wanted or ""] + [part.split(";")[0].strip() for part in accept_language.split(",")]
    for candidate in candidates:
        for code in available:
            if candidate and (candidate.lower() == code.lower() or candidate.split("-")[0].lower() == code.lower()
                              or code.split("-")[0].lower() == candidate.lower()):
                return code
    return DEFAULT_LANGUAGE


def _table(lang: str, part: str) -> dict[str, Any]:
    return _locales().get(lang, {}).get(part) or {}


def tr(lang: str, key: str, **values: Any) -> str:
    """The page text `key` in `lang` (English when that language lacks it), with `{name}` fields filled."""
    text = _table(lang, "ui").get(key)
    if text is None:
        text = _table(DEFAULT_LANGUAGE, "ui").get(key, key)
    return str(text).format(**values) if values else str(text)


def config_label(lang: str, key: str) -> str:
    entry = _table(lang, "config").get(key) or {}
    return str(entry.get("label") or (_table(DEFAULT_LANGUAGE, "config").get(key) or {}).get("label") or key)


def config_help(lang: str, key: str) -> str:
    from lmforge.config.schema import key_index

    entry = _table(lang, "config").get(key) or {}
    if lang != DEFAULT_LANGUAGE and entry.get("help"):
        return str(entry["help"])
    for schema in ("train", "eval", "export", "serve"):  # the first command whose config has the key
        if key in key_index(schema):
            return key_index(schema)[key].help
    return ""


BRIEF = 180  # characters of a config key's help shown under its field (the whole text is in `lmforge help config`)


def brief(text: str) -> str:
    """A help text cut to fit under a field: whole when short, else up to the last clause that fits, with '…'."""
    if len(text) <= BRIEF:
        return text
    cut = max(text.rfind(mark, 0, BRIEF) for mark in (". ", "; ", "。", ";", ", ", ","))
    return (text[:cut + 1] if cut > BRIEF // 3 else text[:BRIEF]).rstrip() + " …"


def resolve(lang: str, text: Text) -> str:
    if isinstance(text, tuple):
        part, key = text
        return config_label(lang, key) if part == "label" else brief(config_help(lang, key))
    return tr(lang, text)


class Localized:
    """The page's translatable component properties: `make(gr.Button, {"value": "train.start"}, elem_id=...)`
    builds the component with its texts in the page's first language and remembers which property shows which text
    (`value` is the text of a Markdown or a Button)."""

    def __init__(self, lang: str = DEFAULT_LANGUAGE) -> None:
        self.lang = lang
        self.items: list[tuple[Any, dict[str, Text]]] = []

    def make(self, factory: Callable[..., Any], texts: dict[str, Text], /, **kwargs: Any) -> Any:
        component = factory(**kwargs, **{prop: resolve(self.lang, text) for prop, text in texts.items()})
        self.items.append((component, texts))
        return component

    @property
    def components(self) -> list[Any]:
        return [component for component, _ in self.items]

    def config_keys(self) -> set[str]:
        """The config keys whose label or help the page shows (every language must have them)."""
        return {text[1] for _, texts in self.items for text in texts.values() if isinstance(text, tuple)}

    def ui_keys(self) -> set[str]:
        return {text for _, texts in self.items for text in texts.values() if isinstance(text, str)}

    def updates(self, lang: str) -> list[Any]:
        """One update per registered component: its texts in `lang`."""
        import gradio as gr

        return [gr.update(**{prop: resolve(lang, text) for prop, text in texts.items()}) for _, texts in self.items]


def config_texts(key: str) -> dict[str, Text]:
    """A config key's field texts: its label and its help."""
    return {"label": ("label", key), "info": ("help", key)}
