"""CPM's tokenizer (jieba + sentencepiece, ▂/▃ for spaces and newlines) carried by a GPT-2 bundle, run without torch.

The reference is transformers' CpmTokenizer with its documented `_tokenize` (jieba segmentation, spaces and newlines
as ▂ ▃): transformers 5.x's own `_tokenize` skips both, so its ids drop every space of the text.
"""

from __future__ import annotations

import io
import itertools
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")
pytest.importorskip("rjieba")

from conftest import CHINESE, tiny_gpt2

import edgeinfer
from edgeinfer.bundle import Manifest
from edgeinfer.cli import main
from edgeinfer.cpm import CpmTokenizer, open_cpm_tokenizer

SUBJECTS = ["我们", "老师", "小明", "这位诗人", "北京的学生", "长江边的渔夫", "他的朋友", "一只小猫"]
VERBS = ["喜欢", "看见了", "写下", "想起", "正在学习", "不知道", "告诉我们"]
OBJECTS = ["明月光", "春天的花", "唐朝的诗歌", "2024年的新闻", "三千里路", "故乡的山水", "人工智能", "一本好书"]
ENDINGS = ["。", "，然后回家了。", "吗？", "！", "，1,000个人都知道。", " hello world", "\n第二行", "  两个空格"]
CORPUS = [s + v + o + ENDINGS[i % len(ENDINGS)]
          for i, (s, v, o) in enumerate(itertools.product(SUBJECTS, VERBS, OBJECTS))] + [CHINESE]
PROBES = ["我们喜欢明月光 在 2024年\n第二行, 1,000个人", "  老师\n\n写下  唐朝的诗歌 ", "小猫<eod>春天的花 <mask> 故乡",
          "hello world 2019, 3,5,", CHINESE, "Ｆｕｌｌ　ｗｉｄｔｈ，é", ""]


class DocumentedCpmTokenizer(transformers.CpmTokenizer):
    """transformers' CpmTokenizer with the `_tokenize` its documentation describes (as in transformers 4.x)."""

    def _tokenize(self, text: str) -> list[str]:
        return super()._tokenize(" ".join(word.translate(self.translator) for word in self.jieba.cut(text, False)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A folder with a tiny random GPT-2 and CPM's tokenizer over a sentencepiece model trained on CORPUS."""
    folder = tmp_path_factory.mktemp("cpm") / "ckpt"
    folder.mkdir()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(line.translate(str.maketrans(" \n", "▂▃")) for line in CORPUS), model_writer=model,
        vocab_size=160, model_type="unigram", character_coverage=1.0, minloglevel=2, user_defined_symbols=["▂", "▃"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, control_symbols=["<sep>", "<cls>", "<mask>", "<eop>", "<eod>"])
    (folder / "spiece.model").write_bytes(model.getvalue())
    reference = DocumentedCpmTokenizer(str(folder / "spiece.model"))
    reference.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "CpmTokenizer"  # the documented subclass saves its own name
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tiny_gpt2(seed=7, vocab_size=len(reference), initializer_range=0.3).save_pretrained(folder)
    return folder, reference


@pytest.fixture(scope="module")
def bundle(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("cpm-bundle") / "b"
    assert main(["export", "--from-hf", str(checkpoint[0]), "--out", str(out)]) == 0
    return Manifest.read(out)


@pytest.fixture(scope="module")
def tokenizer(bundle) -> CpmTokenizer:
    folder, manifest = bundle
    return open_cpm_tokenizer(folder, manifest, manifest["model"]["vocab_size"])


def test_manifest_carries_the_sentencepiece_model_and_the_added_tokens(bundle, checkpoint) -> None:
    folder, manifest = bundle
    reference = checkpoint[1]
    assert manifest["files"]["sentencepiece"] == "spiece.model" and manifest["files"]["tokenizer"] is None
    assert manifest["tokenizer"]["type"] == "cpm"
    assert manifest["tokenizer"]["added_tokens"] == {t: reference.convert_tokens_to_ids(t) for t in reference.all_special_tokens}
    assert (folder / "spiece.model").read_bytes() == (checkpoint[0] / "spiece.model").read_bytes()


def test_ids_equal_cpm_tokenizers_on_the_corpus(tokenizer, checkpoint) -> None:
    reference = checkpoint[1]
    for text in [*CORPUS, *PROBES]:
        assert tokenizer.encode(text).ids == reference.encode(text, add_special_tokens=False), text
    assert any(reference.unk_token_id in reference.encode(t, add_special_tokens=False) for t in PROBES)  # unknowns too


def test_decoding_maps_the_marks_back(tokenizer, checkpoint) -> None:
    reference = checkpoint[1]
    for text in [*CORPUS[:40], *PROBES]:
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=True), text
        assert tokenizer.decode(ids, skip_special_tokens=False) == reference.decode(ids), text
    assert tokenizer.decode(tokenizer.encode("老师 写下\n明月光").ids) == "老师 写下\n明月光"


def test_generated_text_round_trips(bundle, tokenizer, checkpoint) -> None:
    folder, _ = bundle
    model = edgeinfer.load(folder, device="cpu", threads=1)
    model.tokenizer = tokenizer  # what edgeinfer.bundle.load_tokenizer returns for a CPM bundle
    generated = model.generate(["我们喜欢 明月光\n"], max_new_tokens=24, do_sample=False)[0]
    ids = generated.token_ids
    assert len(set(ids)) > 3  # a lively model: the text is not one token repeated
    text = tokenizer.decode(ids)
    assert generated.text == text == checkpoint[1].decode(ids, skip_special_tokens=True)
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_bundle_without_the_runtime_packages_is_refused_with_the_fix(bundle, monkeypatch) -> None:
    import sys

    from edgeinfer.errors import BundleError

    monkeypatch.setitem(sys.modules, "rjieba", None)
    with pytest.raises(BundleError, match=r"edgeinfer\[cpm\]"):
        open_cpm_tokenizer(*bundle)


def test_load_opens_the_cpm_tokenizer(bundle) -> None:
    assert isinstance(edgeinfer.load(bundle[0], device="cpu", threads=1).tokenizer, CpmTokenizer)
