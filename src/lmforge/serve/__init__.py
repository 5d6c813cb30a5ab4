"""Serving: the generation engine, terminal chat, the OpenAI-compatible API, the web UI and its job runner."""
