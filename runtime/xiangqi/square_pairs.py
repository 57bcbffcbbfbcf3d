"""`SquarePairModel`: a Xiangqi bundle whose graph gives every (from, to) square pair of a position a logit in one
call of the position's prompt (`edgeinfer.export.xiangqi_policy` writes it; `bundle.square_pair_head` tells it apart
from the 4-character decoder). `MoveModel` reads the legal moves' pairs from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle import first_line
from ..errors import BundleError, InputError
from ..session import open_session
from .tables import FILES, RANKS
from .tokens import PROMPT_TOKENS

SQUARES = FILES * RANKS


class SquarePairModel:
    """A square-pair Xiangqi bundle opened on an onnxruntime session."""

    def __init__(self, folder: Path, manifest: dict, device: str = "auto", threads: int | None = None,
                 allow_spinning: bool | None = None) -> None:
        self.folder, self.manifest = folder, manifest
        model = manifest["model"]
        if model["max_positions"] != PROMPT_TOKENS:
            raise BundleError(f"bundle {folder}: model.max_positions is {model['max_positions']}; a square-pair move "
                              f"head reads the {PROMPT_TOKENS} tokens of a board prompt")
        self.vocab_size, self.n_segments = model["vocab_size"], model.get("n_segments") or 0
        self.session, self.providers = open_session(folder / manifest["files"]["model"], manifest, device, threads,
                                                    allow_spinning)
        probe = np.full((1, PROMPT_TOKENS), self.vocab_size - 1)  # the largest ids the manifest promises
        try:
            segments = np.full_like(probe, self.n_segments - 1) if self.n_segments else None
            shape = self.move_logits(probe, segments).shape
        except Exception as exc:  # onnxruntime raises several unrelated types; all mean the numbers are wrong
            raise BundleError(f"bundle {folder}: the graph fails on a prompt of token id {self.vocab_size - 1} "
                              f"(manifest model block): {first_line(exc)}") from exc
        if shape != (1, SQUARES, SQUARES):
            raise BundleError(f"bundle {folder}: move_logits of one prompt is {shape}, not (1, {SQUARES}, {SQUARES})")

    @property
    def provider(self) -> str:
        return self.providers.name

    def move_logits(self, prompts: np.ndarray, segments: np.ndarray | None = None) -> np.ndarray:
        """(batch, 91) prompt token ids (and their square segments when the model reads them) -> (batch, 90, 90)
        logits, from-square x to-square, squares numbered rank * 9 + file as the prompt's side to move sees them."""
        prompts = np.asarray(prompts)
        if prompts.ndim != 2 or prompts.shape[1] != PROMPT_TOKENS or prompts.dtype.kind not in "iu" or not (
                prompts.size and 0 <= prompts.min() and prompts.max() < self.vocab_size):
            raise InputError(f"prompts must be (batch, {PROMPT_TOKENS}) token ids in [0, {self.vocab_size}), got "
                             f"shape {prompts.shape} of {prompts.dtype}")
        feeds = {"input_ids": prompts.astype(np.int64)}
        if self.n_segments:
            segments = np.asarray(segments) if segments is not None else None
            if segments is None or segments.shape != prompts.shape or segments.dtype.kind not in "iu" or not (
                    0 <= segments.min() and segments.max() < self.n_segments):
                raise InputError(f"this model reads square segments: segments must be {prompts.shape} ints in "
                                 f"[0, {self.n_segments})")
            feeds["token_type_ids"] = segments.astype(np.int64)
        return self.session.run(["move_logits"], feeds)[0]
