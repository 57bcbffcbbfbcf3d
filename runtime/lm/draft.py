"""Draft tokens for speculative decoding: by prompt lookup, or from a small draft model.

The main model checks every draft token in the one call that also gives its next token, so accepted drafts cost
nearly nothing and rejected ones change no output.

- `prompt_lookup`: copy-heavy generation (answering over a given passage, editing, long dialogue history, and the
  loops small models fall into) repeats spans of what is already there. The tokens that followed the last earlier
  occurrence of the final n tokens (n from `max_ngram` down to 1) are a free guess at what comes next.
- `DraftModel`: a smaller bundle with the same vocabulary (a smaller model, or the same model quantized to int8 or
  int4) decodes a few tokens ahead; it pays where its step costs a fraction of the main model's and agrees with it
  often. Sampled requests draw drafts from the draft model's own distribution, which the acceptance rule needs.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .cache import KVCache
from .sampling import apply_repetition_penalty, probabilities, sample_from
from .step import Step


@dataclass
class Draft:
    """Draft tokens for one request, and the distribution each was drawn from (None: proposed with certainty)."""

    tokens: list[int]
    probs: list[np.ndarray] | None = None


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


def check_draft_model(draft, target) -> None:
    """Refuse a draft model whose token ids do not mean what the main model's mean."""
    from .model import CausalLM

    if not isinstance(draft, CausalLM):
        task = getattr(draft, "manifest", {}).get("task")
        if task is not None:
            raise InputError(f"the draft is a bundle for task {task!r}: a draft must be a text decoder")
        raise InputError(f"draft must be a decoder bundle opened with edgeinfer.load, got {type(draft).__name__}")
    if draft.bidirectional_prefix:
        raise InputError("the draft model reads a bidirectional prefix (a board model): it cannot draft text")
    if draft.vocab_size != target.vocab_size:
        raise InputError(f"the draft model's vocabulary has {draft.vocab_size} tokens, the main model's "
                         f"{target.vocab_size}: a draft must share the main model's tokenizer")
    checked = _SAME_TOKENIZER.setdefault(draft, weakref.WeakSet())
    if draft.tokenizer is None or target.tokenizer is None or target in checked:
        return
    if draft.tokenizer.get_vocab(with_added_tokens=True) != target.tokenizer.get_vocab(with_added_tokens=True):
        raise InputError("the draft model's tokenizer maps tokens to other ids than the main model's: a draft must "
                         "share the main model's tokenizer")
    checked.add(target)  # compared once: each `generate` call makes an engine, which checks its draft


# draft model -> the main models whose tokenizers it was found to share (two 50,000-token vocabularies: 60 ms)
_SAME_TOKENIZER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class DraftModel:
    """A draft model's cache rows, one per engine slot, kept in step with each request's history.

    A step (`propose`) first feeds each drafting row the history tokens its row lacks (the main model's tokens of
    the previous step, all those of a pause in drafting, or a new request's whole prompt), then decodes the draft
    tokens one call per token for all drafting rows together. `keep` then rolls each row back to the draft tokens
    the main model accepted; `free` forgets a finished request's row.
    """

    def __init__(self, draft, target, slots: int, capacity: int) -> None:
        check_draft_model(draft, target)
        self.model = draft
        self.cache = KVCache(draft, slots, min(capacity, draft.max_positions))
        self._step = Step(draft, self.cache)
        self._row_steps: dict[int, Step] = {}  # one-row steps on views of a host shared buffer
        self.synced = np.zeros(slots, dtype=np.int64)  # history tokens each row's cache holds
        self._fed_drafts = np.zeros(slots, dtype=np.int64)  # draft tokens fed in the last `propose`

    def room(self, history: int) -> int:
        """Most draft tokens a request of `history` tokens may ask for: the row keeps one free slot."""
        return self.cache.capacity - history - 1

    def propose(self, wanted: dict[int, tuple[object, int]]) -> dict[int, Draft]:
        """Up to `count` draft tokens for each slot in `wanted` ({slot: (handle, count)}), chosen greedily or sampled
        as the request decodes."""
        handles = {slot: handle for slot, (handle, _) in wanted.items()}
        counts = {slot: count for slot, (_, count) in wanted.items()}
        logits = self._catch_up(handles)
        drafts = {slot: Draft([], [] if handle.request.options.sampling.do_sample else None)
                  for slot, handle in handles.items()}
        while True:
            for slot, row in logits.items():
                handle, draft = handles[slot], drafts[slot]
                penalty = handle.request.options.sampling.repetition_penalty
                if penalty != 1.0:  # as the main model's logits will have it: drafts it then agrees with
                    apply_repetition_penalty(row[None], [np.array([*handle.history, *draft.tokens])], penalty)
                if not np.isfinite(row.max()):  # a broken draft model only stops drafting
                    counts[slot] = len(draft.tokens)
                elif draft.probs is None:
                    draft.tokens.append(int(row.argmax()))
                else:
                    draft.probs.append(probabilities(row[None], handle.request.options.sampling)[0])
                    draft.tokens.append(sample_from(draft.probs[-1], handle.rng))
            going = [slot for slot, count in counts.items() if len(drafts[slot].tokens) < count]
            if not going:
                break
            logits = self._decode({slot: drafts[slot].tokens[-1] for slot in going}, handles)
        for slot, draft in drafts.items():
            self._fed_drafts[slot] = max(len(draft.tokens) - 1, 0)
            self.synced[slot] += self._fed_drafts[slot]
        return drafts

    def keep(self, slot: int, accepted: int) -> None:
        """The main model accepted the first `accepted` draft tokens of `slot`: forget the draft's other ones."""
        dropped = self._fed_drafts[slot] - min(accepted, self._fed_drafts[slot])
        self.cache.rollback(slot, int(dropped))
        self.synced[slot] -= dropped
        self._fed_drafts[slot] = 0

    def free(self, slot: int) -> None:
        self.cache.free(slot)
        self.synced[slot] = self._fed_drafts[slot] = 0

    def _catch_up(self, handles: dict[int, object]) -> dict[int, np.ndarray]:
        """Feed each row the history tokens it lacks; each row's logits after its last history token."""
        pending = {slot: handle.history[self.synced[slot]:] for slot, handle in handles.items()}
        logits = {}
        batched = {}
        for slot, tokens in pending.items():
            if len(tokens) == 1:
                batched[slot] = tokens
            elif self.cache.shared or not self.synced[slot]:  # a new prompt, or a row of a shared buffer
                logits[slot] = self._feed_row(slot, tokens, self._segments(handles[slot], len(tokens)))
            else:  # a concat cache takes ragged runs for every row in one call
                batched[slot] = tokens
        if batched and not self.cache.shared:
            rows = self.cache.rows
            runs = [batched.get(slot, [0]) for slot in range(rows)]
            active = np.array([slot in batched for slot in range(rows)])
            segments = None
            if self.model.uses_segments:  # per token, as the runs are
                segments = [self._segments(handles[slot], len(batched[slot])) if slot in batched else [0]
                            for slot in range(rows)]
            out = self._step.verify(runs, segments, active)
            logits |= {slot: out[slot, len(tokens) - 1].copy() for slot, tokens in batched.items()}
        elif batched:
            logits |= self._decode({slot: tokens[0] for slot, tokens in batched.items()}, handles)
        for slot, tokens in pending.items():
            self.synced[slot] += len(tokens)
        return logits

    def _decode(self, tokens: dict[int, int], handles: dict) -> dict[int, np.ndarray]:
        """Feed one token to each given row in one call; their logits."""
        rows = max(tokens) + 1 if self.cache.can_view_rows else self.cache.rows
        ids, active = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=bool)
        for slot, token in tokens.items():
            ids[slot], active[slot] = token, True
        segments = None
        if self.model.uses_segments:
            segments = np.zeros(rows, dtype=np.int64)
            for slot in tokens:
                segments[slot] = handles[slot].request.reply_segment
        out = self._step.decode(ids, segments, active)
        return {slot: out[slot].copy() for slot in tokens}

    def _feed_row(self, slot: int, tokens: list[int], segments: list[int] | None) -> np.ndarray:
        """Feed one row a run of tokens: in place on a host shared buffer, else on a one-row cache copied back."""
        cache = self.cache
        if cache.can_view_rows:
            if slot not in self._row_steps:
                self._row_steps[slot] = Step(self.model, cache.row_view(slot))
            step = self._row_steps[slot]
            step.cache.lengths[0] = cache.lengths[slot]
            logits = step.feed([tokens], None if segments is None else [segments])
            cache.lengths[slot] = step.cache.lengths[0]
            return logits[0].copy()
        single = cache.take([slot]) if self.synced[slot] else KVCache(self.model, 1, cache.capacity)
        logits = Step(self.model, single).feed([tokens], None if segments is None else [segments])
        cache.insert(slot, single)
        return logits[0].copy()

    def _segments(self, handle, count: int) -> list[int] | None:
        """The segment ids of a request's last `count` history tokens (None for a draft model without segments)."""
        if not self.model.uses_segments:
            return None
        request = handle.request
        prefix = request.prefix
        known = [*((prefix.segment_ids or [0] * len(prefix.token_ids)) if prefix else []),
                 *(request.segments or [0] * len(request.tokens))]
        every = known + [request.reply_segment] * (len(handle.history) - len(known))
        return every[len(every) - count:]
