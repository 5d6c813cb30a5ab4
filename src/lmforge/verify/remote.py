"""Rewards from another process or machine (`reward_url`): one POST per batch of completions.

The request body is JSON: `{"prompts": [...], "completions": [...], "references": [...], "messages": [...]}` plus
the dataset's other columns (`tests`, `solution`, ...), one entry per completion, as reward functions get them. The
answer is `{"rewards": [float, ...]}` (or the bare list), one per completion, in order. A connection error, a
timeout or a 5xx answer is retried with a growing pause; a 4xx answer, a malformed body or the last failure stops the
run with what the server said (a reward silently turned into 0 would train on noise).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from lmforge.errors import TrainingError

logger = logging.getLogger(__name__)


def post_json(url: str, body: dict[str, Any], timeout: float, retries: int, backoff: float, what: str,
              headers: dict[str, str] | None = None) -> bytes:
    """POST `body` as JSON and return the answer's bytes. A connection error, a timeout or a 5xx answer is retried
    `retries` times with a doubling pause; a 4xx answer or the last failure raises TrainingError naming `what`."""
    data = json.dumps(body, default=str).encode()
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:500].decode(errors="replace")
            if err.code < 500:
                raise TrainingError(f"{what} {url} answered {err.code}: {detail}") from None
            last_error = f"HTTP {err.code}: {detail}"
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            last_error = str(getattr(err, "reason", err))
        logger.warning("%s %s: %s (attempt %d of %d)", what, url, last_error, attempt + 1, retries + 1)
    raise TrainingError(f"{what} {url} did not answer after {retries + 1} attempts ({timeout:g} s each): "
                        f"{last_error}")


class RemoteReward:
    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0):
        self.url, self.timeout, self.retries, self.backoff = url, float(timeout), max(0, int(retries)), backoff

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        body = {"prompts": prompts, "completions": completions, **{
            ("references" if k == "reference" else k): v for k, v in columns.items()}}
        raw = post_json(self.url, body, self.timeout, self.retries, self.backoff, "reward_url")
        return self._rewards(raw, len(completions))

    def _rewards(self, raw: bytes, count: int) -> list[float]:
        try:
            payload = json.loads(raw)
            rewards = payload["rewards"] if isinstance(payload, dict) else payload
            values = [float(r) for r in rewards]
        except (ValueError, KeyError, TypeError):
            raise TrainingError(f"reward_url {self.url} answered something other than "
                                f'{{"rewards": [numbers]}}: {raw[:300]!r}') from None
        if len(values) != count:
            raise TrainingError(f"reward_url {self.url} returned {len(values)} rewards for {count} completions")
        return values
