"""Extractive question answering over bundles (DGCNN or BERT readers): torch-free, numpy + onnxruntime."""

from .reader import Answer, Reader
from .spans import best_span, top_spans, vote, vote_totals

__all__ = ["Answer", "Reader", "best_span", "top_spans", "vote", "vote_totals"]
