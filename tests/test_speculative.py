"""Speculative decoding by prompt lookup: drafts are the text's own continuations, verified in the decode call.

Greedy output must equal plain greedy decoding token for token on every cache layout, with stop tokens, length
limits and continuous batching; the acceptance rule keeps the sampling distribution exact.
"""

from __future__ import annotations

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import InputError
from edgeinfer.lm import Request, decode_options
from edgeinfer.lm.draft import prompt_lookup
from edgeinfer.lm.sampling import accept_draft
from edgeinfer.loader import default_bundle

pytest.importorskip("torch")

LOOPY = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 9, 9, 9], [3, 14, 15, 92, 65, 3, 14, 15], [1]]


@pytest.fixture(scope="module", params=["standard", "contrib", "query_key", "chat"])
def model(request, lively_bundles, query_key_bundle):
    if request.param == "chat":  # the shipped bundle: segments and a greedy that loops
        return edgeinfer.load(default_bundle(request.param), device="cpu")
    return edgeinfer.load({**lively_bundles, "query_key": query_key_bundle}[request.param], device="cpu")


def _prompts(model) -> list[list[int]]:
    return [[t % model.vocab_size for t in p] for p in LOOPY]


def test_prompt_lookup_continues_the_latest_earlier_occurrence():
    assert prompt_lookup([5, 6, 7, 8, 5, 6], 3) == [7, 8, 5]  # "5 6" occurred at 0: 7 8 5 followed
    assert prompt_lookup([1, 2, 3, 1, 2, 4, 1, 2], 2) == [4, 1]  # the latest occurrence wins
    assert prompt_lookup([1, 2, 3, 9, 3], 4) == [9, 3]  # a 1-gram when no longer one matches; cut at the end
    assert prompt_lookup([4, 4, 4, 4, 4], 3) == [4, 4]  # a loop: the occurrence with the longest continuation
    assert prompt_lookup([4, 4, 4, 4, 4, 4, 4], 3) == [4, 4, 4]
    assert prompt_lookup([1, 2, 3, 4], 3) == []
    assert prompt_lookup([7], 3) == [] and prompt_lookup([7, 7], 0) == []


@pytest.mark.parametrize("stops", [False, True])
def test_greedy_with_drafts_equals_plain_greedy_one_prompt_at_a_time(model, stops):
    for prompt in _prompts(model):
        options = {"max_new_tokens": 24, "do_sample": False, "stop_token_ids": []}
        plain = model.generate([prompt], **options)[0].token_ids
        if stops:  # a stop token met inside an accepted draft ends the request there
            options["stop_token_ids"] = [plain[len(plain) // 2]]
            plain = model.generate([prompt], **options)[0].token_ids
        assert model.generate([prompt], speculate=5, **options)[0].token_ids == plain


def test_greedy_with_drafts_in_a_batch_and_with_continuous_batching(model):
    prompts = _prompts(model)
    options = {"max_new_tokens": 20, "do_sample": False, "stop_token_ids": []}
    plain = [g.token_ids for g in model.generate(prompts, **options)]
    for max_active in (1, 2, 4):
        got = model.generate(prompts, max_active=max_active, speculate=4, **options)
        assert [g.token_ids for g in got] == plain


def test_drafts_save_decode_steps_when_the_text_repeats():
    """The shipped chat model's greedy reply loops: verified drafts cover several tokens per step."""
    model = edgeinfer.load(default_bundle("chat"), device="cpu")
    settings = decode_options(model, max_new_tokens=60, min_new_tokens=60, do_sample=False, stop_token_ids=[])
    prompt = model.encode("i love to go to the park and i love to go to the")
    steps, tokens = {}, {}
    for speculate in (0, 6):
        engine = model.engine(slots=1, capacity=128, speculate=speculate)
        counted = []
        engine.on_step = counted.append
        handle = engine.submit(Request(prompt, settings))
        while engine.busy:
            engine.step()
        steps[speculate], tokens[speculate] = len(counted), handle.generated
    assert tokens[6] == tokens[0] and len(tokens[0]) == 60
    assert steps[0] == 59 and steps[6] < 40, steps


def test_after_a_rejected_draft_only_a_short_probe_is_drafted_until_one_is_accepted(lively_bundles):
    from edgeinfer.lm.engine import PROBE_DRAFT

    model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
    engine = model.engine(slots=1, capacity=64, speculate=6)
    handle = engine.submit(Request([5, 6, 7, 8] * 4 + [5], decode_options(model, max_new_tokens=20)))
    engine._slots[0] = handle

    def draft() -> list[int]:
        return engine._drafts([0])[0].tokens

    assert draft() == [6, 7, 8, 5, 6, 7]  # what followed the last 5
    handle.draft_misses = 1
    assert draft() == [6, 7][:PROBE_DRAFT] and PROBE_DRAFT < 6
    handle.draft_misses, handle.draft_cooldown = 2, 3  # and it waits out its cooldown first
    assert [draft() for _ in range(4)] == [[], [], [], [6, 7][:PROBE_DRAFT]]


def test_drafts_stop_at_the_cache_capacity(lively_bundles):
    model = edgeinfer.load(lively_bundles["standard"], device="cpu")
    prompt = [t % 97 for t in LOOPY[0]]
    plain = model.generate([prompt], max_new_tokens=200, do_sample=False, stop_token_ids=[])[0]
    spec = model.generate([prompt], max_new_tokens=200, do_sample=False, stop_token_ids=[], speculate=8)[0]
    assert spec.token_ids == plain.token_ids and len(prompt) + len(plain.token_ids) == model.max_positions


def test_sampling_with_drafts_is_seeded_and_runs_on_every_layout(model):
    prompts = _prompts(model)
    options = {"max_new_tokens": 16, "do_sample": True, "top_k": 6, "seed": [1, 2, 3, 4], "stop_token_ids": []}
    first = [g.token_ids for g in model.generate(prompts, speculate=4, **options)]
    assert first == [g.token_ids for g in model.generate(prompts, speculate=4, **options)]
    assert all(len(t) == 16 for t in first)


@pytest.mark.parametrize("draft", [0, 2, 4])
def test_the_acceptance_rule_keeps_the_distribution(draft):
    probs = np.array([0.1, 0.05, 0.45, 0.3, 0.1])
    rng = np.random.default_rng(0)
    draws = np.bincount([accept_draft(probs, draft, rng) for _ in range(40_000)], minlength=5) / 40_000
    np.testing.assert_allclose(draws, probs, atol=0.01)


@pytest.mark.parametrize("bad", [-1, 17, 2.5, "3", True])
def test_speculate_is_checked(model, bad):
    with pytest.raises(InputError, match="speculate must be an integer in"):
        model.generate([[1, 2]], speculate=bad)
