"""Speculative decoding with a draft model: a smaller bundle of the same tokenizer drafts, the main model verifies.

Greedy output must equal plain greedy decoding token for token whatever the draft (the same model, another cache
layout, its int8 quantization, an unrelated model, one with fewer positions), alone, in a batch and under
continuous batching; sampled output must keep the main model's distribution (the acceptance rule with the draft's
own distribution); a draft that cannot draft for the model is refused by name.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from conftest import tiny_gpt2

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import InputError
from edgeinfer.lm import Request, decode_options
from edgeinfer.lm.sampling import accept_draft
from edgeinfer.loader import default_bundle

pytest.importorskip("torch")

PROMPTS = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 9, 9, 9], [3, 14, 15, 92, 65, 3, 14, 15], [1]]
GREEDY = {"max_new_tokens": 30, "do_sample": False, "stop_token_ids": []}


@pytest.fixture(scope="module")
def drafts(lively_gpt2, tmp_path_factory):
    """Draft bundles for the lively GPT-2 (vocabulary 97, 64 positions): its int8 quantization, an unrelated
    one-layer model, one with 32 positions, and one with a vocabulary of 98."""
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    root = tmp_path_factory.mktemp("drafts")
    sources = {"int8": (lively_gpt2, "standard", "int8"),
               "unrelated": (tiny_gpt2(seed=8, initializer_range=0.3, n_layer=1), "contrib", "none"),
               "short": (tiny_gpt2(seed=7, initializer_range=0.3, n_positions=32), "standard", "none"),
               "wider": (tiny_gpt2(seed=7, vocab_size=98), "standard", "none")}
    for name, (model, attention, quantize) in sources.items():
        export_hf_checkpoint(model, root / name, attention=attention, quantize=quantize)
    return {name: edgeinfer.load(root / name, device="cpu") for name in sources}


@pytest.fixture(scope="module")
def mains(lively_bundles):
    return {layout: edgeinfer.load(lively_bundles[layout], device="cpu") for layout in ("standard", "contrib")}


def _steps(model, draft, prompt: list[int], speculate: int = 4, **options) -> tuple[list[int], int]:
    """The tokens an engine with `draft` generates for `prompt` alone, and its decode steps."""
    engine = model.engine(slots=1, capacity=64, speculate=speculate, draft=draft)
    steps = []
    engine.on_step = steps.append
    handle = engine.submit(Request(prompt, decode_options(model, **(GREEDY | options)), seed=0))
    while engine.busy:
        engine.step()
    return handle.generated, len(steps)


DRAFT_NAMES = ["same", "other layout", "int8", "unrelated", "short"]


@pytest.mark.parametrize(("layout", "draft_name"), itertools.product(["standard", "contrib"], DRAFT_NAMES))
def test_greedy_with_a_draft_model_equals_plain_greedy(mains, drafts, layout, draft_name):
    model = mains[layout]
    draft = {"same": model, "other layout": mains[{"standard": "contrib", "contrib": "standard"}[layout]]}.get(
        draft_name) or drafts[draft_name]
    plain = [g.token_ids for g in model.generate(PROMPTS, **GREEDY)]
    for prompt, expected in zip(PROMPTS, plain):
        assert model.generate([prompt], speculate=4, draft=draft, **GREEDY)[0].token_ids == expected
    for max_active in (2, 4):  # a batch, and continuous batching
        got = model.generate(PROMPTS, max_active=max_active, speculate=3, draft=draft, **GREEDY)
        assert [g.token_ids for g in got] == plain


def test_drafts_the_model_agrees_with_save_decode_steps(mains, drafts):
    model = mains["standard"]
    plain, plain_steps = _steps(model, None, PROMPTS[2], speculate=0)
    assert plain_steps == 29  # the prefill gives the first of 30 tokens
    same, steps = _steps(model, model, PROMPTS[2])
    assert same == plain and steps == 6  # every draft accepted: 5 tokens a step
    quantized, steps = _steps(model, drafts["int8"], PROMPTS[2])
    assert quantized == plain and steps < 12
    unrelated, steps = _steps(model, drafts["unrelated"], PROMPTS[2])
    assert unrelated == plain and steps == 29  # nothing accepted: each step still gives its one token


def test_a_sampled_draft_from_the_main_models_own_distribution_is_always_kept(mains):
    """Kept with probability min(1, p/q) = 1 when q = p: every draft is accepted (the rule for drafts proposed with
    certainty would keep each with probability p(draft) only, and still sample exactly)."""
    model = mains["standard"]
    tokens, steps = _steps(model, model, PROMPTS[2], do_sample=True, top_k=3)
    assert len(tokens) == 30 and steps == 6


def test_a_draft_model_follows_segments_and_kept_prefixes():
    """The chat bundle drafting for itself: with the reply's segment ids and a kept prefix every draft is accepted,
    which fails if the draft model fed the wrong segments or missed the prefix's tokens."""
    model = edgeinfer.load(default_bundle("chat"), device="cpu")
    history = model.encode("i love to go to the park")
    kept = model.prefill(history, segment_ids=[0] * len(history))
    rest = model.encode(" and the")
    options = {"max_new_tokens": 24, "min_new_tokens": 24, "do_sample": False, "stop_token_ids": [],
               "prefix": kept, "segment_ids": [[1] * len(rest)], "reply_segment": 1}
    plain = model.generate([rest], **options)[0].token_ids
    engine = model.engine(slots=1, capacity=128, speculate=4, draft=model)
    steps = []
    engine.on_step = steps.append
    checked = {k: v for k, v in options.items() if k not in ("prefix", "segment_ids", "reply_segment")}
    handle = engine.submit(Request(rest, decode_options(model, **checked), segments=[1] * len(rest), reply_segment=1,
                                   prefix=kept))
    while engine.busy:
        engine.step()
    assert handle.generated == plain and len(steps) == 5  # 23 tokens after the first, 5 a step


def test_sampling_with_a_draft_model_keeps_the_distribution(mains, drafts):
    """Three sampled tokens (top-k 3) after one prompt, 3,000 seeds: their joint frequencies match the main model's
    own probabilities, with a draft that mostly agrees (int8) and one that does not (unrelated)."""
    model = mains["standard"]
    prompt = [3, 14, 15]

    def top3(context: list[int]) -> dict[int, float]:
        logits = model.logits([context])[0, -1].astype(np.float64)
        best = np.argsort(-logits)[:3]
        p = np.exp(logits[best] - logits[best].max())
        return dict(zip(best.tolist(), p / p.sum()))

    exact = {}
    for a, pa in top3(prompt).items():
        for b, pb in top3(prompt + [a]).items():
            for c, pc in top3(prompt + [a, b]).items():
                exact[a, b, c] = pa * pb * pc
    n = 3000
    for draft in (drafts["int8"], drafts["unrelated"]):
        got = model.generate([prompt] * n, max_new_tokens=3, do_sample=True, top_k=3, seed=list(range(n)),
                             stop_token_ids=[], max_active=64, speculate=2, draft=draft)
        counts = {}
        for g in got:
            counts[tuple(g.token_ids)] = counts.get(tuple(g.token_ids), 0) + 1
        assert set(counts) <= set(exact)
        distance = 0.5 * sum(abs(counts.get(k, 0) / n - p) for k, p in exact.items())
        assert distance < 0.04, distance


@pytest.mark.parametrize("draft_at", [1, 3])
def test_the_acceptance_rule_with_the_drafts_distribution_keeps_the_target(draft_at):
    p = np.array([0.1, 0.05, 0.45, 0.3, 0.1])
    q = np.array([0.5, 0.2, 0.1, 0.1, 0.1]) if draft_at == 1 else np.array([0.05, 0.05, 0.05, 0.8, 0.05])
    rng = np.random.default_rng(0)
    draws = [accept_draft(p, int(rng.choice(5, p=q)), rng, q) for _ in range(40_000)]
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / 40_000, p, atol=0.01)


def test_drafts_that_cannot_draft_are_refused_by_name(mains, drafts, query_key_bundle):
    model = mains["standard"]
    cases = [(drafts["wider"], 2, "the draft model's vocabulary has 98 tokens, the main model's 97"),
             ("bundles/small", 2, "draft must be a decoder bundle opened with edgeinfer.load, got str"),
             (model, 0, "a draft model needs speculate >= 1")]
    for draft, speculate, message in cases:
        with pytest.raises(InputError, match=message):
            model.generate([[1, 2]], speculate=speculate, draft=draft)
    with pytest.raises(InputError, match="draft does not apply to beam search"):
        model.generate([[1, 2]], num_beams=2, draft=model)
    board = edgeinfer.load(default_bundle("xiangqi-chars"), device="cpu")
    with pytest.raises(InputError, match="bidirectional prefix"):
        model.engine(slots=1, speculate=2, draft=board)
    chat = edgeinfer.load(default_bundle("chat"), device="cpu")
    with pytest.raises(InputError, match="vocabulary has"):
        edgeinfer.load(query_key_bundle, device="cpu").engine(slots=1, speculate=2, draft=chat)


def test_a_tokenizer_that_maps_other_ids_is_refused(tmp_path):
    """Two bundles of the same vocabulary size whose tokenizers give the same text other ids."""
    from tokenizers import Tokenizer, models

    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle

    letters = list("abcdefgh")
    bundles = []
    for name, order in (("forward", letters), ("reversed", letters[::-1])):
        tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(order)}, unk_token=order[0]))
        tokenizer.save(str(tmp_path / f"{name}.json"))
        export_gpt_bundle(GPT(GPTConfig(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2)),
                          tmp_path / name, attention="standard", tokenizer_file=tmp_path / f"{name}.json")
        bundles.append(edgeinfer.load(tmp_path / name, device="cpu"))
    with pytest.raises(InputError, match="maps tokens to other ids"):
        bundles[0].engine(slots=1, speculate=2, draft=bundles[1])


def test_the_cli_drafts_with_a_bundle(lively_bundles, drafts, capsys):
    bundle = lively_bundles["contrib"]
    draft = drafts["int8"].folder
    expected = edgeinfer.load(bundle, device="cpu").generate([[5, 6, 7]], max_new_tokens=12)[0].token_ids
    code = main(["generate", str(bundle), "--ids", "--prompt", "5 6 7", "--max-new-tokens", "12", "--greedy",
                 "--speculate", "4", "--draft", str(draft), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["token_ids"] == expected
    for argv, message in ((["--draft", str(draft)], "--draft needs --speculate K"),
                          (["--speculate", "2", "--draft", str(default_bundle("qa"))],
                           "edgeinfer generate --draft needs"),
                          (["--speculate", "2", "--beams", "2"], "not for beam search")):
        code = main(["generate", str(bundle), "--ids", "--prompt", "5 6 7", *argv, "--json"])
        assert code == 2 and message in json.loads(capsys.readouterr().out)["error"]


def test_the_engine_reports_each_draft_and_what_was_accepted(mains, drafts):
    model = mains["standard"]
    for draft, whole in ((model, True), (drafts["unrelated"], False)):
        engine = model.engine(slots=1, capacity=64, speculate=4, draft=draft)
        reports: list[tuple[int, int]] = []
        engine.on_draft = lambda drafted, accepted, reports=reports: reports.append((drafted, accepted))
        engine.submit(Request(PROMPTS[2], decode_options(model, **GREEDY)))
        while engine.busy:
            engine.step()
        assert reports and all(0 <= accepted <= drafted <= 4 for drafted, accepted in reports)
        if whole:  # every draft taken: 29 tokens after the first in 6 steps of 4 drafts and 1 of the main model's
            assert reports == [(4, 4)] * 5 + [(3, 3)]
        else:
            assert sum(accepted for _, accepted in reports) == 0
