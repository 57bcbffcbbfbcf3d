"""Cloze classification on a masked-LM bundle: rows, scores against transformers, batching, refusals, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import perturb_vectors

from edgeinfer.cli import main
from edgeinfer.cloze import Template
from edgeinfer.errors import InputError
from edgeinfer.export.mlm_data import train_tokenizer
from edgeinfer.mlm import MaskedLM

CORPUS = ["这部电影很好看，我很满意。", "服务不好，我不满意。", "他做了一件坏事。", "这是一件好事。"] * 3
TEXTS = ["电影很好看。", "服务不好，坏事一件。", "我"]
LABELS = {"好": "positive", "满意": "positive", "坏": "negative", "不满": "negative"}
MAX_POSITIONS = 24


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(transformers model, tokenizer, bundle folder): a tiny random BertForMaskedLM over CORPUS's characters."""
    root = tmp_path_factory.mktemp("cloze")
    tok = train_tokenizer(CORPUS, 100)
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=MAX_POSITIONS)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    perturb_vectors(model, 0.5)
    model.save_pretrained(root / "ckpt")
    tok.save(str(root / "ckpt" / "tokenizer.json"))
    assert main(["export", "--from-hf", str(root / "ckpt"), "--task", "masked-lm", "--out", str(root / "b")]) == 0
    return model, tok, root / "b"


@pytest.fixture(scope="module")
def mlm(exported) -> MaskedLM:
    import edgeinfer

    return edgeinfer.load(exported[2], device="cpu", threads=1)


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def _log_softmax(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), token_type_ids=torch.zeros(1, len(ids), dtype=torch.long)).logits
    return torch.log_softmax(logits[0].double(), -1).numpy()


def _row(tok, before: str, text: str, after: str, n_masks: int) -> tuple[list[int], int]:
    """[CLS] before [MASK]*n after... with the text placed by hand: the reference for `Template.row`."""
    head = [2, *_ids(tok, before)]
    return [*head, *[4] * n_masks, *_ids(tok, after), *_ids(tok, text), 3], len(head)


def test_template_places_text_and_slot(exported) -> None:
    _, tok, _ = exported
    text = _ids(tok, "电影很好看")
    after = Template("这是___事。", lambda s: _ids(tok, s))  # no {text}: the pattern follows the text
    ids, slot = after.row(text, 2, mask=4, cls=2, sep=3, max_length=MAX_POSITIONS)
    assert ids == [2, *text, *_ids(tok, "这是"), 4, 4, *_ids(tok, "事。"), 3] and slot == 1 + len(text) + 2
    before = Template("___满意。{text}", lambda s: _ids(tok, s))
    ids, slot = before.row(text, 1, mask=4, cls=2, sep=3, max_length=MAX_POSITIONS)
    assert ids == [2, 4, *_ids(tok, "满意。"), *text, 3] and slot == 1
    long = _ids(tok, "好" * 40)  # cut to fit, the pattern kept whole
    ids, _ = before.row(long, 1, mask=4, cls=2, sep=3, max_length=MAX_POSITIONS)
    assert len(ids) == MAX_POSITIONS and ids[:5] == [2, 4, *_ids(tok, "满意。")] and ids[-1] == 3


@pytest.mark.parametrize("pattern", ["{text}这是___。", "___满意。{text}"])
def test_product_scores_equal_transformers(exported, mlm, pattern) -> None:
    model, tok, _ = exported
    found = mlm.cloze(TEXTS, pattern=pattern, labels=LABELS)
    before, after = pattern.replace("{text}", "").split("___")
    for text, result in zip(TEXTS, found, strict=True):
        expected = {}
        for word in LABELS:
            word_ids = _ids(tok, word)
            if pattern.startswith("{text}"):
                ids = [2, *_ids(tok, text), *_ids(tok, before), *[4] * len(word_ids), *_ids(tok, after), 3]
                slot = 1 + len(_ids(tok, text)) + len(_ids(tok, before))
            else:
                ids, slot = _row(tok, before, text, after, len(word_ids))
            lp = _log_softmax(model, ids)
            expected[word] = sum(lp[slot + i, w] for i, w in enumerate(word_ids))
        assert result.words == pytest.approx(expected, abs=1e-4)
        mass = {name: sum(np.exp(v) for w, v in expected.items() if LABELS[w] == name) for name in ("positive", "negative")}
        total = sum(mass.values())
        assert result.scores == pytest.approx({k: v / total for k, v in mass.items()}, abs=1e-5)
        assert result.label == max(mass, key=mass.get)


def test_conditional_scores_fill_the_most_probable_mask_first(exported, mlm) -> None:
    model, tok, _ = exported
    labels = {"满意": "positive", "不满": "negative"}
    found = mlm.cloze(TEXTS, pattern="{text}我___。", labels=labels, scoring="conditional")
    for text, result in zip(TEXTS, found, strict=True):
        for word in labels:
            word_ids = _ids(tok, word)
            ids = [2, *_ids(tok, text), *_ids(tok, "我"), 4, 4, *_ids(tok, "。"), 3]
            slot = 1 + len(_ids(tok, text)) + 1
            total, open_ = 0.0, [0, 1]
            while open_:
                lp = _log_softmax(model, ids)
                gains = [lp[slot + j, word_ids[j]] for j in open_]
                j = open_.pop(int(np.argmax(gains)))
                total += max(gains)
                ids[slot + j] = word_ids[j]
            assert result.words[word] == pytest.approx(total, abs=1e-4)


def test_batching_does_not_change_scores(mlm) -> None:
    texts = [*TEXTS, "好" * 50, "坏"]
    one = mlm.cloze(texts, pattern="{text}这是___。", labels=LABELS, batch_size=1)
    many = mlm.cloze(texts, pattern="{text}这是___。", labels=LABELS, batch_size=4)
    for a, b in zip(one, many, strict=True):
        assert a.label == b.label and a.words == pytest.approx(b.words, abs=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pattern": "没有空位"}, "exactly one mask slot"),
    ({"pattern": "___和___"}, "exactly one mask slot"),
    ({"pattern": "{text}{text}___"}, "at most once"),
    ({"labels": {"好": "positive"}}, "at least two label names"),
    ({"labels": {"好": "positive", "龘": "negative"}}, "not in the model's vocabulary"),
    ({"labels": {}}, "non-empty mapping"),
    ({"scoring": "max"}, "scoring must be one of"),
    ({"texts": "电影"}, "non-empty list"),
    ({"texts": [3]}, "must be a str"),
    ({"batch_size": 0}, "batch_size"),
    ({"pattern": "{text}" + "很" * 30 + "___"}, "leaves no room for text"),
])
def test_bad_inputs_are_refused(mlm, kwargs, message) -> None:
    call = {"texts": TEXTS, "pattern": "{text}___。", "labels": LABELS} | kwargs
    with pytest.raises(InputError, match=message):
        mlm.cloze(call.pop("texts"), **call)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["cloze", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_classifies_texts_and_jsonl(exported, mlm, capsys, tmp_path) -> None:
    bundle = str(exported[2])
    labels = ["--label", "好=positive", "--label", "坏=negative"]
    code, out, _ = _cli(capsys, "--bundle", bundle, "--pattern", "{text}这是___。", *labels, "--text", TEXTS[0],
                        "--text", TEXTS[1], "--json")
    expected = mlm.cloze(TEXTS[:2], pattern="{text}这是___。", labels={"好": "positive", "坏": "negative"})
    assert code == 0
    assert [r["label"] for r in json.loads(out)["results"]] == [c.label for c in expected]
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"text": TEXTS[0]}, ensure_ascii=False) + "\nnot json\n{\"txt\": 1}\n", encoding="utf-8")
    code, out, _ = _cli(capsys, "--bundle", bundle, "--pattern", "{text}这是___。", *labels, "--jsonl", str(lines))
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and rows[0]["label"] == expected[0].label and rows[0]["words"] == pytest.approx(expected[0].words)
    assert rows[1]["line"] == 2 and rows[1]["error"].startswith("not JSON") and rows[2]["line"] == 3


@pytest.mark.parametrize(("argv", "message"), [
    (["--label", "好=positive", "--label", "坏=negative"], "give --text TEXT"),
    (["--label", "好", "--label", "坏=negative", "--text", "x"], "WORD=NAME"),
    (["--label", "好=a", "--label", "好=b", "--text", "x"], "given twice"),
    (["--label", "好=a", "--label", "坏=b", "--text", "x", "--pattern", "no slot"], "exactly one mask slot"),
])
def test_cli_refusals_are_one_line(exported, capsys, argv, message) -> None:
    if "--pattern" not in argv:
        argv = [*argv, "--pattern", "{text}这是___。"]
    code, _, err = _cli(capsys, "--bundle", str(exported[2]), *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_bundle_of_another_task(capsys) -> None:
    code, _, err = _cli(capsys, "--bundle", str(Path(__file__).parents[1] / "runtime/bundles/xiangqi"), "--pattern", "___", "--label", "好=a",
                        "--label", "坏=b", "--text", "x")
    assert code == 2 and "needs one for task 'masked-lm'" in err
