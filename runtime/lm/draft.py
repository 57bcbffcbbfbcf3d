"""Draft tokens for speculative decoding by prompt lookup: continue the latest earlier occurrence of the text's end.

Copy-heavy generation (answering over a given passage, editing, long dialogue history, and the loops small models
fall into) repeats spans of what is already there. The tokens that followed the last earlier occurrence of the final
n tokens (n from `max_ngram` down to 1) are a free guess at what comes next; the model checks every guess in the one
call that also gives the next token, so accepted drafts cost nearly nothing and rejected ones change no output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def prompt_lookup(history: Sequence[int], k: int, max_ngram: int = 3) -> list[int]:
    """Up to `k` tokens that followed an earlier occurrence of the history's last n tokens, longest n first.

    The occurrence is the latest one followed by `k` tokens, else the earliest (the longest continuation there is):
    in a loop the latest occurrence sits just before the end, with one token after it.
    """
    if k < 1 or len(history) < 2:
        return []
    tokens = np.asarray(history, dtype=np.int64)
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        starts = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)  # every window but the tail itself
        found = np.flatnonzero((starts == tokens[-n:]).all(axis=1))
        if found.size:
            full = found[found + n + k <= len(tokens)]
            follow = int(full[-1] if full.size else found[0]) + n
            return tokens[follow : follow + k].tolist()
    return []
