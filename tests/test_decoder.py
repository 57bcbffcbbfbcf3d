"""The decode engine against transformers' generate() and plain numpy references."""

from __future__ import annotations

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import InputError
from edgeinfer.lm.cache import KVCache
from edgeinfer.lm.sampling import top_k_top_p_filter
from edgeinfer.lm.step import Step

torch = pytest.importorskip("torch")

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [1], [40, 41, 42, 43]]


@pytest.fixture(scope="module", params=["standard", "contrib"])
def model(request, lively_bundles):
    return edgeinfer.load(lively_bundles[request.param], device="cpu")


def _hf_greedy(hf, prompt, n, **kw):
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0,
                          eos_token_id=None, **kw)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_equals_transformers(model, lively_gpt2, batch):
    prompts = PROMPTS[:batch]
    results = model.generate(prompts, max_new_tokens=12)
    for prompt, result in zip(prompts, results):
        assert result.token_ids == _hf_greedy(lively_gpt2, prompt, 12)
        assert result.finish_reason == "length"
    assert len({tuple(r.token_ids) for r in results}) == batch  # the test model does not just repeat itself


def test_repetition_penalty_equals_transformers(model, lively_gpt2):
    result = model.generate(PROMPTS[:2], max_new_tokens=10, repetition_penalty=1.5)
    for prompt, r in zip(PROMPTS, result):
        assert r.token_ids == _hf_greedy(lively_gpt2, prompt, 10, repetition_penalty=1.5)


def test_rows_equal_alone_greedy_and_sampled(model):
    options = {"max_new_tokens": 9, "do_sample": True, "top_k": 20, "top_p": 0.9, "temperature": 0.8}
    batched = model.generate(PROMPTS, seed=[11, 12, 13, 14], **options)
    for i, prompt in enumerate(PROMPTS):
        alone = model.generate([prompt], seed=[11 + i], **options)[0]
        assert alone.token_ids == batched[i].token_ids
    greedy = model.generate(PROMPTS, max_new_tokens=9)
    for i, prompt in enumerate(PROMPTS):
        assert model.generate([prompt], max_new_tokens=9)[0].token_ids == greedy[i].token_ids


def test_sampling_reproducible_and_top_k1_is_greedy(model):
    a = model.generate(PROMPTS, max_new_tokens=8, do_sample=True, seed=3)
    b = model.generate(PROMPTS, max_new_tokens=8, do_sample=True, seed=3)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    samples = model.generate(PROMPTS[:1], max_new_tokens=8, do_sample=True, seed=3, num_return_sequences=4)
    assert len({tuple(r.token_ids) for r in samples}) > 1
    top1 = model.generate(PROMPTS, max_new_tokens=8, do_sample=True, top_k=1, seed=5)
    greedy = model.generate(PROMPTS, max_new_tokens=8)
    assert [r.token_ids for r in top1] == [r.token_ids for r in greedy]


def _filter_reference(row: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Sort, keep top-k, renormalise, keep tokens until the mass reaches p (the crossing token included)."""
    order = sorted(range(len(row)), key=lambda i: -row[i])
    keep = order[:top_k] if top_k else order
    probs = np.exp(row[keep] - row[keep].max())
    probs /= probs.sum()
    kept, mass = [], 0.0
    for token, p in zip(keep, probs):
        if top_p < 1.0 and mass >= top_p:  # p = 1 keeps everything, whatever the rounding of the sum
            break
        kept.append(token)
        mass += p
    out = np.full_like(row, -np.inf)
    out[kept] = row[kept]
    return out


@pytest.mark.parametrize("top_k, top_p", [(0, 0.5), (5, 1.0), (10, 0.7), (3, 0.01), (0, 1.0)])
def test_filters_equal_reference(top_k, top_p):
    logits = np.random.default_rng().standard_normal((6, 50)).astype(np.float32) * 3
    expected = np.stack([_filter_reference(row, top_k, top_p) for row in logits])
    top_k_top_p_filter(logits, top_k, top_p)
    np.testing.assert_array_equal(logits, expected)


def test_stream_matches_generate_and_stops(model):
    events = list(model.stream(PROMPTS[:2], max_new_tokens=6))
    generated = model.generate(PROMPTS[:2], max_new_tokens=6)
    for row in range(2):
        assert [e.token_id for e in events if e.request == row] == generated[row].token_ids
    first = generated[1].token_ids[0]
    stopped = model.generate(PROMPTS[:2], max_new_tokens=6, stop_token_ids=[first])
    assert stopped[1].token_ids == [first] and stopped[1].finish_reason == "stop_token"
    assert stopped[0].token_ids == generated[0].token_ids[: len(stopped[0].token_ids)]
    forced = model.generate(PROMPTS[1:2], max_new_tokens=6, min_new_tokens=3, stop_token_ids=[first])
    assert len(forced[0].token_ids) >= 3 and first not in forced[0].token_ids[:3]


def test_stream_yields_first_tokens_straight_after_prefill(model, monkeypatch):
    """Time to first token is one prefill call: the first events come out before any decode step runs."""
    calls = []
    run = Step.run
    monkeypatch.setattr(Step, "run", lambda self, ids, *rest: calls.append(ids.shape) or run(self, ids, *rest))
    stream = model.stream(PROMPTS[:2], max_new_tokens=4)
    first = [next(stream), next(stream)]
    assert len(calls) == 1 and calls[0][1] > 1  # one call, the prompts' prefill
    assert sorted(e.request for e in first) == [0, 1]
    rest = list(stream)
    assert len(calls) == 4 and all(shape[1] == 1 for shape in calls[1:])  # then three one-token steps
    assert len(first) + len(rest) == 2 * 4


def test_decode_step_equals_a_fresh_feed_and_survives_a_remade_cache(model):
    """The bound-once decode step gives a fresh binding's logits, also after the cache gets new memory."""
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    fast, slow = KVCache(model, 2, 16), KVCache(model, 2, 16)
    step = Step(model, fast)
    step.feed(prompts)
    logits = Step(model, slow).feed(prompts)
    for i in range(4):
        tokens = logits.argmax(-1)
        if i == 2:  # what a join on CUDA does: the same contents in new buffers
            fast._set_arrays([a.copy() for a in fast.arrays()])
        got = step.decode(tokens).copy()
        logits = Step(model, slow).feed(tokens[:, None].tolist())
        np.testing.assert_allclose(got, logits, atol=1e-5)
    np.testing.assert_array_equal(fast.lengths, slow.lengths)
    for mine, theirs in zip(fast.arrays(), slow.arrays()):  # the steps wrote into the cache's current memory
        np.testing.assert_allclose(mine, theirs, atol=1e-5)


def test_logits_processor_constrains(model):
    allowed = np.array([3, 30, 60])

    def only_allowed(row, generated, logits):
        keep = logits[allowed].copy()
        logits[:] = -np.inf
        logits[allowed] = keep

    results = model.generate(PROMPTS, max_new_tokens=5, logits_processor=only_allowed, do_sample=True, seed=1)
    assert all(t in allowed for r in results for t in r.token_ids)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"temperature": 0}, "temperature"),
        ({"stop_token_ids": [10_000]}, "stop token 10000"),
        ({"seed": [1, 2]}, "seed list has 2 entries"),
    ],
)
def test_bad_options_raise_and_engine_stays_usable(model, options, message):
    with pytest.raises(InputError, match=message):
        model.generate(PROMPTS[:1], **options)
    assert len(model.generate(PROMPTS[:1], max_new_tokens=2)[0].token_ids) == 2


def test_bad_prompts(model):
    with pytest.raises(InputError, match="empty prompt"):
        model.generate([[]])
    with pytest.raises(InputError, match="no room"):
        model.generate([list(range(64))])
    with pytest.raises(InputError, match="exceeds the configured limit"):
        model.generate([[1]] * 65)
    with pytest.raises(InputError, match="non-empty list"):
        model.generate([])


def _reference_beam(model, prompt, width, steps, stops=()):
    """Plain beam search re-running the whole sequence without a cache (bert4keras semantics)."""
    beams, scores = [list(prompt)], np.zeros(1)
    for _ in range(steps):
        logits = np.stack([model.logits(np.array([b]))[0, -1].astype(np.float64) for b in beams])
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        total = (scores[:, None] + logp).reshape(-1)
        order = np.argsort(-total, kind="stable")[:width]
        beams = [beams[i // logp.shape[1]] + [int(i % logp.shape[1])] for i in order]
        scores = total[order]
        if beams[0][-1] in stops:
            return beams[0][len(prompt):]
        keep = [i for i, b in enumerate(beams) if b[-1] not in stops]
        beams, scores = [beams[i] for i in keep], scores[keep]
    return beams[int(np.argmax(scores))][len(prompt):]


@pytest.mark.parametrize("width", [1, 3])
def test_beam_search_equals_reference_and_transformers(model, lively_gpt2, width):
    results = model.generate(PROMPTS[:2], num_beams=width, max_new_tokens=6)
    for prompt, result in zip(PROMPTS, results):
        assert result.token_ids == _reference_beam(model, prompt, width, 6)
        with torch.no_grad():
            hf = lively_gpt2.generate(torch.tensor([prompt]), max_new_tokens=6, num_beams=width, do_sample=False,
                                      pad_token_id=0, eos_token_id=None, length_penalty=0.0)
        assert result.token_ids == hf[0, len(prompt):].tolist()


def test_beam_search_stops_when_best_beam_ends(model):
    free = model.generate(PROMPTS[:1], num_beams=3, max_new_tokens=6)[0]
    stop = free.token_ids[2]
    stopped = model.generate(PROMPTS[:1], num_beams=3, max_new_tokens=6, stop_token_ids=[stop])[0]
    assert stopped.token_ids == _reference_beam(model, PROMPTS[0], 3, 6, stops={stop})
    assert stopped.finish_reason == ("stop_token" if stopped.token_ids[-1] == stop else "length")


def test_continued_prefix_equals_fresh_run(model):
    history = [3, 14, 15, 92, 65, 35]
    prefix = model.prefill(history)
    for turn in ([89, 79], [32]):
        continued = model.generate([turn], prefix=prefix, max_new_tokens=7)[0]
        fresh = model.generate([history + turn], max_new_tokens=7)[0]
        assert continued.token_ids == fresh.token_ids
        prefix = model.prefill(turn + continued.token_ids, prefix=prefix)
        history = history + turn + continued.token_ids
    # a fork: several continuations of one kept prefix in one batch
    forks = model.generate([[1], [2, 3], [4, 5, 6]], prefix=prefix, max_new_tokens=4)
    for cont, fork in zip([[1], [2, 3], [4, 5, 6]], forks):
        assert fork.token_ids == model.generate([history + cont], max_new_tokens=4)[0].token_ids


def test_continuous_batching_equals_one_by_one(model):
    prompts = [[i + 1, i + 2, (3 * i) % 90] for i in range(7)] + [PROMPTS[1]]
    lengths = [3, 9, 5, 2, 7, 4, 6, 8]
    expected = [model.generate([p], max_new_tokens=n)[0].token_ids for p, n in zip(prompts, lengths)]
    # rows stop at different lengths through a logits processor: a stop token chosen per request
    events = list(model.stream(prompts, max_new_tokens=9, max_active=3,
                               stop_token_ids=sorted({e[n - 1] for e, n in zip(expected, lengths)})))
    got = [[e.token_id for e in events if e.request == i] for i in range(len(prompts))]
    for tokens, full in zip(got, expected):
        assert tokens == full[: len(tokens)] and len(tokens) >= 1


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A tiny GPT-2 checkpoint with a byte-level tokenizer whose Chinese characters span several tokens."""
    from conftest import byte_level_tokenizer, tiny_gpt2

    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    root = tmp_path_factory.mktemp("text")
    tokenizer = byte_level_tokenizer()
    tiny_gpt2(seed=7, initializer_range=0.3, vocab_size=tokenizer.get_vocab_size()).save_pretrained(root / "hf")
    tokenizer.save(str(root / "hf" / "tokenizer.json"))
    export_hf_checkpoint(root / "hf", root / "bundle", attention="contrib")
    return edgeinfer.load(root / "bundle", device="cpu")


def test_streamed_text_is_the_decoded_tokens(text_model):
    prompts = ["滚滚长江", "hello"]
    events = list(text_model.stream(prompts, max_new_tokens=24, do_sample=True, seed=3))
    generated = text_model.generate(prompts, max_new_tokens=24, do_sample=True, seed=3)
    for row, result in enumerate(generated):
        assert "".join(e.text for e in events if e.request == row) == result.text
        assert result.text == text_model.decode(result.token_ids) and result.text


def test_stop_strings_end_rows_where_the_text_first_holds_them(text_model):
    free = text_model.generate(["滚滚长江", "hello"], max_new_tokens=24, do_sample=True, seed=3)
    stop = free[0].text[3:5]
    stopped = text_model.generate(["滚滚长江", "hello"], max_new_tokens=24, do_sample=True, seed=3,
                                  stop_strings=[stop])
    first = stopped[0]
    assert first.finish_reason == "stop_string" and first.text.endswith(stop[-1]) and stop in first.text
    assert stop not in text_model.decode(first.token_ids[:-1])
    assert first.token_ids == free[0].token_ids[: len(first.token_ids)]
    other = stopped[1]  # its row goes on to its own end, unless the string turns up there too
    assert other.token_ids == free[1].token_ids[: len(other.token_ids)]
    assert other.finish_reason == ("stop_string" if stop in other.text else free[1].finish_reason)
