"""Token ids in, text deltas out: what a streaming client sees, cut at the request's stop strings."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class TextStream:
    """Decodes a growing completion and hands out only text that is final: an incomplete UTF-8 character (a byte
    token decoding to U+FFFD) and any tail that might be the start of a stop string are held back, so a client never
    sees text that the next token would change or a stop string would remove."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # the completion so far, cut at a stop string once one appeared
        self.sent = 0  # characters of `text` already handed out

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; returns (new final text, whether a stop string ended the completion)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._take(len(self.text)), True
        if self.text.endswith("\ufffd"):
            return "", False
        return self._take(len(self.text) - self._stop_prefix_length()), False

    def flush(self) -> str:
        """The rest of the text, at the end of the completion."""
        return self._take(len(self.text))

    def _stop_prefix_length(self) -> int:
        """Length of the longest end of `text` that a stop string starts with."""
        longest = 0
        for stop in self.stop:
            for k in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def _take(self, end: int) -> str:
        end = max(end, self.sent)
        delta, self.sent = self.text[self.sent: end], end
        return delta
