"""`Reader`: an extractive-QA bundle answering many questions at once over passages or long contexts.

Each (question, passage) pair is cut into windows of the model's input length; windows are batched by
length (little padding); every window's best spans are decoded in numpy and mapped back to character
offsets of the caller's text; per passage each span keeps its best window score; answers are voted
across a question's passages by Σs²/(1+Σs).
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..bundle import first_line
from ..errors import BundleError, InputError
from ..session import open_session
from .bert import BertFeatures
from .dgcnn import DGCNNFeatures
from .inputs import MAX_CONTEXT_CHARS, MAX_QUESTIONS, check_positive, check_texts, clean
from .spans import top_spans, vote_totals
from .units import Encoded, Window
from .windows import buckets, windows

BACKENDS = {"dgcnn": DGCNNFeatures, "bert": BertFeatures}


@dataclass(frozen=True)
class Answer:
    """An answer: its text, which passage it came from, [start, end) characters there, and scores.

    `score` is the vote Σs²/(1+Σs) over every passage where the same text was found; `span_score` is the
    best single span's score s (a probability).
    """

    text: str
    passage: int
    start: int
    end: int
    score: float
    span_score: float

    def to_dict(self) -> dict:
        return asdict(self)


class Reader:
    """An extractive-QA bundle opened on an onnxruntime session."""

    def __init__(self, folder: Path, manifest: dict, device: str = "auto", threads: int | None = None,
                 allow_spinning: bool | None = None) -> None:
        if manifest["reader"] not in BACKENDS:
            raise BundleError(f"manifest reader {manifest['reader']!r} is unknown; expected one of {sorted(BACKENDS)}")
        self.folder = folder
        self.manifest = manifest
        self.defaults = manifest["qa"]
        self.features = BACKENDS[manifest["reader"]](folder, manifest)
        self.session, self.providers = open_session(folder / manifest["files"]["model"], manifest, device, threads,
                                                        allow_spinning)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._probe()

    def _probe(self) -> None:
        """Run the largest input the manifest promises once, so wrong model numbers fail at load, named."""
        window = self.defaults["window"]
        try:
            self.session.run(self.output_names, self.features.probe_feeds(window))
        except Exception as exc:  # onnxruntime raises several unrelated types; all mean the numbers are wrong
            raise BundleError(f"bundle {self.folder}: the graph fails on a full window (qa.window {window}, "
                              f"qa.max_question_len, the last vocabulary ids of the manifest's model block): "
                              f"{first_line(exc)}") from exc

    @property
    def provider(self) -> str:
        return self.providers.name

    def answer(
        self,
        questions: list[str],
        passages: list[list[str]] | None = None,
        context: list[str] | None = None,
        *,
        top_k: int = 1,
        max_answer_len: int | None = None,
        threshold: float | None = None,
        batch_size: int | None = None,
        batch_tokens: int | None = None,
        window: int | None = None,
        stride: int | None = None,
        max_context_chars: int = MAX_CONTEXT_CHARS,
        max_questions: int = MAX_QUESTIONS,
    ) -> list[list[Answer]]:
        """Up to top_k answers per question, best first (an empty list when no span reaches `threshold`).

        Give either `passages` (several passages per question) or `context` (one text per question, any
        length). max_answer_len counts units (characters for DGCNN, tokens for BERT); `threshold` is a
        minimum span probability (default: the manifest's, which the shipped readers calibrate on their dev set so
        that an empty list means the passages do not hold the answer); window and stride (units shared by neighbouring
        windows) default to the manifest's. A session call takes at most `batch_size` windows and, when the manifest or the caller sets
        `batch_tokens`, at most that many units: on CPU a BERT-base forward over 32 windows of 384 tokens ran 12%
        slower per window than over 1-4 (activations outgrow the caches), so BERT bundles cap calls at 2048 tokens.
        A call is refused past `max_context_chars` characters in one context or passage, or `max_questions`
        questions: work grows with the text (a 10 MB context took 390 s).
        """
        questions, groups = check_texts(questions, passages, context, max_context_chars=max_context_chars,
                                        max_questions=max_questions)
        top_k = check_positive(top_k, "top_k")
        opts = {"max_answer_len": max_answer_len, "batch_size": batch_size, "window": window, "stride": stride,
                "batch_tokens": batch_tokens}
        opts = {name: self.defaults.get(name) if value is None else value for name, value in opts.items()}
        for name in ("max_answer_len", "batch_size", "window"):
            check_positive(opts[name], name)
        if opts["batch_tokens"] is not None:
            check_positive(opts["batch_tokens"], "batch_tokens")
        if isinstance(opts["stride"], bool) or not isinstance(opts["stride"], int) or not 0 <= opts["stride"] < opts["window"]:
            raise InputError(f"stride must be an int in [0, window={opts['window']}), got {opts['stride']!r}")
        threshold = self.defaults.get("threshold") if threshold is None else threshold
        if threshold is not None and (isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real)
                                      or math.isnan(threshold)):
            raise InputError(f"threshold must be a number, got {threshold!r}")
        threshold = None if threshold is None else float(threshold)

        rows = self._windows(questions, groups, opts["window"], opts["stride"])
        found = self._decode(rows, opts["batch_size"], opts["batch_tokens"], opts["max_answer_len"], top_k, threshold)
        return [self._vote(qi, group, found, top_k) for qi, group in enumerate(groups)]

    def _windows(self, questions: list[str], groups: list[list[str]], window: int, stride: int) -> list[Window]:
        encoded: dict[str, Encoded] = {}  # passages repeat across questions (shared distractors)
        rows = []
        for qi, (question, group) in enumerate(zip(questions, groups, strict=True)):
            q = self.features.question(clean(question))
            size = self.features.window_size(q, window)
            if size < 1:
                raise InputError(f"window {window} leaves no room for a passage after question {qi}")
            for pi, text in enumerate(group):
                if text not in encoded:
                    encoded[text] = self.features.passage(clean(text))
                p = encoded[text]
                rows += [Window(qi, pi, q, p, a, b) for a, b in windows(len(p), size, min(stride, size // 2))]
        return rows

    def _decode(self, rows: list[Window], batch_size: int, batch_tokens: int | None, max_len: int, top_k: int,
                threshold: float | None):
        """{(question, passage): {(char start, char end): best score over windows}}."""
        log_scores = self.features.combine == "sum"
        cut = threshold
        if log_scores:
            cut = math.log(threshold) if threshold is not None and threshold > 0 else None
        found: dict[tuple[int, int], dict[tuple[int, int], float]] = defaultdict(dict)
        for batch in buckets(rows, lambda r: (len(r.q) + r.length, r.length), batch_size, batch_tokens):
            feeds = self.features.feeds(batch)
            outputs = dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
            start, end, valid = self.features.scores(outputs, feeds, batch)
            spans = top_spans(start, end, valid, max_len=max_len, top_k=top_k, combine=self.features.combine, threshold=cut)
            for row, row_spans in zip(batch, spans, strict=True):
                best = found[row.question, row.passage]
                for i, j, score in row_spans:
                    key = (int(row.p.offsets[row.start + i, 0]), int(row.p.offsets[row.start + j - 1, 1]))
                    best[key] = max(best.get(key, -np.inf), math.exp(score) if log_scores else score)
        return found

    @staticmethod
    def _vote(qi: int, group: list[str], found: dict, top_k: int) -> list[Answer]:
        occurrences: dict[str, list[tuple[float, int, int, int]]] = defaultdict(list)
        for pi, text in enumerate(group):
            spans = sorted(found.get((qi, pi), {}).items(), key=lambda item: -item[1])[:top_k]
            for (start, end), score in spans:
                occurrences[text[start:end]].append((score, pi, start, end))
        totals = vote_totals({text: [o[0] for o in occ] for text, occ in occurrences.items()})
        ranked = sorted(totals, key=lambda text: -totals[text])[:top_k]
        answers = []
        for text in ranked:
            score, pi, start, end = max(occurrences[text])
            answers.append(Answer(text, pi, start, end, totals[text], score))
        return answers
