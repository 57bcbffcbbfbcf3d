"""`MaskedLM`: a masked-language-model bundle (task `masked-lm`, exported from `BertForMaskedLM`).

A text is read as [CLS] text [SEP] with the bundle's tokenizer (a "[MASK]" in it is the mask token); `logits` gives
every position's vocabulary logits, `fill` the top-k tokens at each mask with their probabilities, and `cloze`
classifies texts with a pattern and label words (PET's cloze questions, `edgeinfer.cloze`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import first_line, load_tokenizer
from .cloze import Cloze, Template, check_scoring, label_words
from .errors import BundleError, InputError
from .session import open_session


@dataclass(frozen=True)
class Filled:
    """A candidate for one mask: the token, its id, and its probability there (softmax over the vocabulary)."""

    token: str
    id: int
    score: float


def _count(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"manifest field '{field}' must be an integer >= 1, got {value!r}")
    return value


class MaskedLM:
    """A masked-LM bundle opened on an onnxruntime session."""

    def __init__(self, folder: Path, manifest: dict, device: str = "auto", threads: int | None = None,
                 allow_spinning: bool | None = None) -> None:
        self.folder, self.manifest = folder, manifest
        sizes = manifest.get("model")
        if not isinstance(sizes, dict):
            raise BundleError("manifest field 'model' must be an object")
        self.vocab_size = _count(sizes.get("vocab_size"), "model.vocab_size")
        self.max_length = _count(sizes.get("max_positions"), "model.max_positions")
        self.tokenizer = load_tokenizer(folder, manifest, self.vocab_size)
        special = manifest["special_tokens"]
        missing = [t for t in ("cls", "sep", "pad", "mask") if isinstance(special.get(t), bool)
                   or not isinstance(special.get(t), int) or not 0 <= special[t] < self.vocab_size]
        if missing:
            raise BundleError(f"masked-LM bundle {folder} names no {', '.join(missing)} token id in "
                              f"[0, {self.vocab_size}) (manifest special_tokens)")
        self.cls, self.sep, self.pad, self.mask = (special[t] for t in ("cls", "sep", "pad", "mask"))
        self.session, self.providers = open_session(folder / manifest["files"]["model"], manifest, device, threads,
                                                        allow_spinning)
        self.token_types = "token_type_ids" in {i.name for i in self.session.get_inputs()}
        try:  # the largest input the manifest promises, so wrong model numbers fail at load, named
            self._run([[self.vocab_size - 1] * self.max_length])
        except Exception as exc:  # onnxruntime raises several unrelated types; all mean the numbers are wrong
            raise BundleError(f"bundle {folder}: the graph fails on {self.max_length} tokens of id "
                              f"{self.vocab_size - 1} (manifest model block): {first_line(exc)}") from exc

    @property
    def provider(self) -> str:
        return self.providers.name

    def encode(self, text: str) -> list[int]:
        """[CLS] text [SEP] as token ids."""
        if not isinstance(text, str):
            raise InputError(f"a text must be a str, got {type(text).__name__}")
        if self.tokenizer is None:
            raise InputError("this bundle has no tokenizer: pass token ids instead of text")
        return [self.cls, *self.tokenizer.encode(text, add_special_tokens=False).ids, self.sep]

    def _ids(self, item) -> list[int]:
        ids = self.encode(item) if isinstance(item, str) else item
        if not isinstance(ids, Sequence) or not ids or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < self.vocab_size for i in ids):
            raise InputError(f"token ids must be a non-empty list of ints in [0, {self.vocab_size}), got {ids!r:.80}")
        if len(ids) > self.max_length:
            raise InputError(f"{len(ids)} tokens is over the model's {self.max_length} positions")
        return [int(i) for i in ids]

    def _run(self, rows: list[list[int]]) -> np.ndarray:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for b, row in enumerate(rows):
            ids[b, : len(row)], mask[b, : len(row)] = row, 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self.token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return self.session.run(["logits"], feeds)[0]

    def logits(self, inputs: Sequence[str | Sequence[int]]) -> list[np.ndarray]:
        """Per input (a text, read as [CLS] text [SEP], or token ids taken as they are): its (tokens, vocab) logits."""
        if isinstance(inputs, str) or not isinstance(inputs, Sequence) or not inputs:
            raise InputError("inputs must be a non-empty list of texts or token-id lists")
        rows = [self._ids(item) for item in inputs]
        out = self._run(rows)
        return [out[b, : len(row)] for b, row in enumerate(rows)]

    def fill(self, text: str | Sequence[int], top_k: int = 5) -> list[list[Filled]]:
        """For each mask of `text` (a text with "[MASK]" in it, or token ids), its top_k tokens, most probable first."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.vocab_size:
            raise InputError(f"top_k must be an int in [1, {self.vocab_size}], got {top_k!r}")
        ids = self._ids(text)
        masks = [i for i, token in enumerate(ids) if token == self.mask]
        if not masks:
            raise InputError("the text has no mask token to fill")
        logits = self._run([ids])[0, masks].astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        best = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        token = self.tokenizer.id_to_token if self.tokenizer is not None else str
        return [[Filled(token(int(i)), int(i), float(p[i])) for i in row] for p, row in zip(probs, best, strict=True)]

    def _fragment(self, text: str) -> list[int]:
        """A piece of text as token ids, no special tokens added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _log_probs(self, rows: list[list[int]], positions: list[list[int]], batch_size: int) -> list[np.ndarray]:
        """Per row, the vocabulary log-softmax (float64) at its positions; rows run batch_size at a time."""
        out = []
        for start in range(0, len(rows), batch_size):
            logits = self._run(rows[start : start + batch_size])
            for b, where in enumerate(positions[start : start + batch_size]):
                chosen = logits[b, where].astype(np.float64)
                chosen -= chosen.max(axis=1, keepdims=True)
                out.append(chosen - np.log(np.exp(chosen).sum(axis=1, keepdims=True)))
        return out

    def cloze(self, texts: Sequence[str], pattern: str, labels: Mapping[str, str], scoring: str = "product",
              batch_size: int = 32) -> list[Cloze]:
        """Classify each text by the label word the model puts in the pattern's slot (see `edgeinfer.cloze`).

        labels maps label word -> label name ({"很": "positive", "不": "negative"}). A word of k tokens fills k masks;
        scoring "product" takes the product of the k per-mask probabilities from one pass, "conditional" fills the
        masks one at a time, most confident first, each conditioned on those already filled (k passes), as PET
        decodes multi-token label words. The product favours short words: give the labels words of one length to
        compare like with like.
        """
        check_scoring(scoring)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise InputError("texts must be a non-empty list of str")
        if self.tokenizer is None:
            raise InputError("this bundle has no tokenizer: cloze classification reads text")
        for text in texts:
            if not isinstance(text, str):
                raise InputError(f"a text must be a str, got {type(text).__name__}")
        template = Template(pattern, self._fragment)
        words = label_words(labels, self._fragment, self.tokenizer.token_to_id("[UNK]"))
        encoded = [self._fragment(text) for text in texts]
        scores = np.zeros((len(texts), len(words)))
        for length in sorted({len(ids) for ids in words.values()}):
            columns = [c for c, ids in enumerate(words.values()) if len(ids) == length]
            if scoring == "product" or length == 1:
                self._score_product(template, encoded, list(words.values()), columns, length, scores, batch_size)
            else:
                self._score_conditional(template, encoded, list(words.values()), columns, scores, batch_size)
        return [self._decide(row, list(words), labels) for row in scores]

    def _score_product(self, template: Template, texts: list[list[int]], words: list[list[int]], columns: list[int],
                       length: int, scores: np.ndarray, batch_size: int) -> None:
        """One pass per text with `length` masks; a word's score sums its tokens' log-probabilities at their masks."""
        rows, slots = zip(*(template.row(t, length, self.mask, self.cls, self.sep, self.max_length) for t in texts),
                          strict=True)
        log_probs = self._log_probs(list(rows), [list(range(s, s + length)) for s in slots], batch_size)
        for t, lp in enumerate(log_probs):
            for c in columns:
                scores[t, c] = lp[np.arange(length), words[c]].sum()

    def _score_conditional(self, template: Template, texts: list[list[int]], words: list[list[int]],
                           columns: list[int], scores: np.ndarray, batch_size: int) -> None:
        """Every (text, word) pair fills its masks one per pass, the most probable of the word's remaining tokens first."""
        pairs = [(t, c) for t in range(len(texts)) for c in columns]
        length = len(words[columns[0]])
        built = [template.row(texts[t], length, self.mask, self.cls, self.sep, self.max_length) for t, _ in pairs]
        rows, slots = [list(r) for r, _ in built], [s for _, s in built]
        open_ = [list(range(length)) for _ in pairs]
        for _ in range(length):
            log_probs = self._log_probs(rows, [[slots[p] + j for j in open_[p]] for p in range(len(pairs))], batch_size)
            for p, ((t, c), lp) in enumerate(zip(pairs, log_probs, strict=True)):
                word = words[c]
                gains = lp[np.arange(len(open_[p])), [word[j] for j in open_[p]]]
                best = int(np.argmax(gains))
                j = open_[p].pop(best)
                scores[t, c] += gains[best]
                rows[p][slots[p] + j] = word[j]

    @staticmethod
    def _decide(row: np.ndarray, words: list[str], labels: Mapping[str, str]) -> Cloze:
        """Label probabilities from word log-probabilities: each label sums its words' probabilities, then the labels
        are normalised to sum to one."""
        names = list(dict.fromkeys(labels[w] for w in words))
        shifted = np.exp(row - row.max())
        mass = np.array([sum(shifted[i] for i, w in enumerate(words) if labels[w] == name) for name in names])
        probs = mass / mass.sum()
        return Cloze(label=names[int(np.argmax(probs))], scores={n: float(p) for n, p in zip(names, probs, strict=True)},
                     words={w: float(v) for w, v in zip(words, row, strict=True)})
