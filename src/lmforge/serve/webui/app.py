"""`lmforge webui` (train, runs, evaluate, chat, export) and `lmforge webchat` (chat only), in Gradio.

The pages only collect values and show results: configs are checked by the same code as the CLI, and training,
evaluation and export run as `lmforge` child processes writing the same files they always write, so a run started
here outlives the page and one started on the command line shows up here. Every text is in the page's language
(`webui/i18n.py`), switchable on the page.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from lmforge.config.schema import ServeConfig
from lmforge.config.serving import ServeArguments, is_loopback
from lmforge.errors import ConfigError
from lmforge.serve.webui import chat_tab, command_tabs, runs_tab, train_tab
from lmforge.serve.webui.i18n import DEFAULT_LANGUAGE, Localized, languages, pick_language
from lmforge.serve.webui.jobs import Job
from lmforge.serve.webui.page import DEFAULT_RUNS_DIR, Page

logger = logging.getLogger(__name__)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline first: no calls home

# the page's address keeps the language chosen on it, so a reload (or a shared link) opens in that language
KEEP_LANGUAGE_JS = "(lang) => { const u = new URL(window.location); u.searchParams.set('lang', lang); " \
    "window.history.replaceState(null, '', u); return lang; }"


def _header(loc: Localized, runs_dir: str | None) -> tuple[Any, Any]:
    import gradio as gr

    with gr.Row():
        loc.make(gr.Markdown, {"value": "page.title"}, elem_id="page_title")
        lang = gr.Dropdown(choices=[(name, code) for code, name in languages().items()], value=DEFAULT_LANGUAGE,
                           label="Language / 语言", elem_id="language", scale=0, min_width=160)
        runs = loc.make(gr.Textbox, {"label": "page.runs_dir", "info": "page.runs_dir_info"},
                        value=runs_dir or DEFAULT_RUNS_DIR, elem_id="runs_dir", scale=1)
    return lang, runs


def _wire_language(demo, page: Page) -> None:
    """The page opens in the language its address or the browser asks for; the picker switches every text."""
    import gradio as gr

    def opening(request):
        params = dict(request.query_params) if request else {}
        lang = pick_language(params.get("lang"), request.headers.get("accept-language", "") if request else "")
        return [lang, *page.loc.updates(lang)]

    opening.__annotations__["request"] = gr.Request  # Gradio passes the request to a parameter annotated so

    def switched(lang):
        return page.loc.updates(lang)

    event = demo.load(opening, None, [page.lang, *page.loc.components])
    for handler, inputs, outputs in page.on_load:
        event.then(handler, inputs, outputs)
    switch = page.lang.input(switched, page.lang, page.loc.components)
    page.lang.input(None, page.lang, None, js=KEEP_LANGUAGE_JS)
    for handler, inputs, outputs in page.on_language:
        switch.then(handler, inputs, outputs)


def build_webui(preset: ServeConfig | None = None, runs_dir: str | None = None):
    import gradio as gr

    jobs: dict[str, Job | None] = {}
    engines: dict[str, Any] = {}
    loc = Localized()
    with gr.Blocks(title="lmforge") as demo:
        lang, runs = _header(loc, runs_dir)
        page = Page(loc, jobs, lang, runs)
        with gr.Tabs() as tabs:
            page.tabs = tabs
            with loc.make(gr.Tab, {"label": "tab.train"}, id="train"):
                train_tab.build(page)
            with loc.make(gr.Tab, {"label": "tab.runs"}, id="runs"):
                runs_tab.build(page)
            with loc.make(gr.Tab, {"label": "tab.eval"}, id="eval"):
                command_tabs.build(page, "eval", "eval", command_tabs.EVAL_FORM)
            with loc.make(gr.Tab, {"label": "tab.chat"}, id="chat"):
                chat_tab.build(page, engines, preset)
            with loc.make(gr.Tab, {"label": "tab.export"}, id="export"):
                command_tabs.build(page, "export", "export", command_tabs.EXPORT_FORM)
        _wire_language(demo, page)
    demo.lmforge_page = page  # for tests: the translatable components and config keys the page shows
    return demo


def build_webchat(cfg: ServeConfig):
    import gradio as gr

    loc = Localized()
    with gr.Blocks(title="lmforge chat") as demo:
        lang, runs = _header(loc, None)
        runs.visible = False
        page = Page(loc, {}, lang, runs)
        chat_tab.build(page, {}, cfg)
        _wire_language(demo, page)
    return demo


def page_credentials(host: str, share: bool, webui_auth: str | None) -> tuple[str, str] | None:
    """Gradio's `auth` for a page: required (exit 2 without it) when anyone but this machine can reach the page,
    since the web UI starts training runs and reads local files. `webui_auth` or $LMFORGE_WEBUI_AUTH: user:password."""
    value = webui_auth or os.environ.get("LMFORGE_WEBUI_AUTH") or None
    credentials = None
    if value is not None:
        user, _, password = value.partition(":")
        if not user or not password:
            raise ConfigError("Config error: 'webui_auth' (or $LMFORGE_WEBUI_AUTH) must be `user:password`.")
        credentials = (user, password)
    exposed = [what for what, on in ((f"host {host} (other machines)", not is_loopback(host)),
                                     ("share: true (a public Gradio link)", share)) if on]
    if exposed and credentials is None:
        raise ConfigError(f"Config error: the web UI would be reachable through {' and '.join(exposed)} without a "
                          f"password; it can start training runs and read local files. Set `webui_auth: "
                          f"user:password` (or $LMFORGE_WEBUI_AUTH), or keep `host: 127.0.0.1` and `share: false`.")
    if exposed:
        logger.warning("The web UI is exposed through %s, behind a password for user '%s'.", " and ".join(exposed),
                       credentials[0])
    return credentials


def _launch(build: Callable[[], Any], serve: ServeArguments) -> None:
    from starlette.middleware import Middleware

    from lmforge.serve.http_app import LoopbackNames

    auth = page_credentials(serve.host, serve.share, serve.webui_auth)  # before anything is built or bound
    # a page on loopback answers loopback names only: a web page elsewhere cannot start runs through DNS rebinding
    local = is_loopback(serve.host) and not serve.share
    middleware = [Middleware(LoopbackNames, allowed=serve.allowed_hosts)] if local else []
    page = build().queue()
    # quiet: Gradio's own lines include "To create a public link, set `share=True` in `launch()`", which is not how
    # lmforge publishes one (`share: true`, with the page's password); the addresses are logged below instead
    _, local_url, share_url = page.launch(
        server_name=serve.host, server_port=serve.port if serve.port is not None else 7860, share=serve.share,
        auth=auth, show_error=True, app_kwargs={"middleware": middleware}, css=train_tab.PAGE_CSS, footer_links=[],
        quiet=True, prevent_thread_lock=True)
    logger.info("Web UI on %s%s", local_url, f" and {share_url} (public link)" if share_url else "")
    page.block_thread()


def run_webui(cfg: ServeConfig | None) -> None:
    preset = cfg if cfg is not None and cfg.model.model_name_or_path else None
    serve = cfg.serve if cfg is not None else ServeArguments()
    _launch(lambda: build_webui(preset, serve.runs_dir), serve)


def run_webchat(cfg: ServeConfig) -> None:
    _launch(lambda: build_webchat(cfg), cfg.serve)
