"""The QA splits segmented by jieba, in one compressed file that training reads without jieba.

``segmented.json.xz`` holds every distinct text once as its list of words (the segmentation the
runtime's reader uses: ``jieba.lcut``) and each split's examples with texts replaced by their index:
``{"texts": [[word, ...], ...], "splits": {split: [{"q": i, "passages": [[i, [[s, e], ...]], ...],
"answer": str, "kind": str}, ...]}}``. lzma keeps it near 10 MB where the JSON lines take 80.
"""

from __future__ import annotations

import json
import logging
import lzma
from pathlib import Path

from tqdm import tqdm

FILE = "segmented.json.xz"


def segment(data: Path, splits: tuple[str, ...]) -> Path:
    """Read data/{split}.jsonl, write data/segmented.json.xz; returns its path."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    index: dict[str, int] = {}
    texts: list[list[str]] = []

    def ref(text: str) -> int:
        if text not in index:
            index[text] = len(texts)
            words = jieba.lcut(text)
            texts.append(words if "".join(words) == text else list(text))
        return index[text]

    out: dict[str, list[dict]] = {}
    for split in splits:
        with (data / f"{split}.jsonl").open(encoding="utf-8") as f:
            examples = [json.loads(line) for line in f]
        out[split] = [
            {"q": ref(ex["question"]), "passages": [[ref(p["text"]), p["answers"]] for p in ex["passages"]],
             "answer": ex["answer"], "kind": ex.get("kind", "")}
            for ex in tqdm(examples, desc=f"jieba {split}", mininterval=5)
        ]
    path = data / FILE
    with lzma.open(path, "wt", encoding="utf-8", preset=3) as f:
        json.dump({"texts": texts, "splits": out}, f, ensure_ascii=False, separators=(",", ":"))
    return path


def load(data: Path) -> tuple[list[list[str]], dict[str, list[dict]]]:
    """(texts as word lists, examples per split) from data/segmented.json.xz."""
    with lzma.open(data / FILE, "rt", encoding="utf-8") as f:
        blob = json.load(f)
    return blob["texts"], blob["splits"]
