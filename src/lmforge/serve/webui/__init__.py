"""lmforge's web UI: `lmforge webui` and `lmforge webchat` (Gradio)."""

from lmforge.serve.webui.app import build_webchat, build_webui, page_credentials, run_webchat, run_webui
from lmforge.serve.webui.chat_tab import chat_turn

__all__ = ["build_webchat", "build_webui", "chat_turn", "page_credentials", "run_webchat", "run_webui"]
