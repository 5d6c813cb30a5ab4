"""`Did you mean ...?` for a mistyped name (config keys, architectures, modules)."""

from __future__ import annotations

import difflib


def suggest(key: str, candidates: list[str] | set[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    if not close:
        close = [c for c in candidates if key.lower() in c.lower() or c.lower() in key.lower()][:1]
    return f" Did you mean '{close[0]}'?" if close else ""
