"""The request-level engine: continuous batching equals decoding alone, slots are freed and reused, requests
submitted and cancelled from other threads leave the rest untouched, and randomness is per request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.chat import Chat
from edgeinfer.errors import BundleError, InputError
from edgeinfer.lm import CapacityError, CausalLM, QueueFull, Request, decode_options
from edgeinfer.lm.cache import KVCache
from edgeinfer.lm.step import Step
from edgeinfer.loader import default_bundle

pytest.importorskip("torch")

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [1], [40, 41, 42, 43], [3, 3], [60, 2, 9, 17, 4], [77]]


@pytest.fixture(scope="module", params=["standard", "contrib", "query_key"])
def model(request, lively_bundles, query_key_bundle):
    return edgeinfer.load({**lively_bundles, "query_key": query_key_bundle}[request.param], device="cpu")


def _prompts(model) -> list[list[int]]:
    return [[t % model.vocab_size for t in p] for p in PROMPTS]


def _alone(model, prompts, **options) -> list[list[int]]:
    seeds = options.pop("seed", None)
    return [model.generate([p], seed=None if seeds is None else [seeds[i]], **options)[0].token_ids
            for i, p in enumerate(prompts)]


@pytest.mark.parametrize("max_active", [1, 2, 3, 4])
@pytest.mark.parametrize("sampled", [False, True])
def test_more_prompts_than_slots_equal_each_alone(model, max_active, sampled):
    prompts = _prompts(model)
    options = {"max_new_tokens": 12}
    if sampled:
        options |= {"do_sample": True, "top_k": 8, "temperature": 0.9, "seed": list(range(len(prompts)))}
    free = _alone(model, prompts, **options, stop_token_ids=[])
    # stop tokens that end rows at different steps (some at once, some never)
    stops = sorted({free[0][1], free[2][4], free[5][0]})
    expected = _alone(model, prompts, **options, stop_token_ids=stops)
    assert len({len(e) for e in expected}) > 1  # rows really end at different steps
    got = model.generate(prompts, max_active=max_active, stop_token_ids=stops, **options)
    assert [g.token_ids for g in got] == expected


def _first_then_the_rest_equal_each_alone(model, engine, prompts, max_new_tokens: int) -> None:
    """The first prompt is admitted alone and decodes a step before the rest arrive; every request's tokens must equal
    its tokens alone."""
    options = {"max_new_tokens": max_new_tokens, "stop_token_ids": []}
    settings = decode_options(model, **options)
    first = engine.submit(Request(prompts[0], settings))
    events = engine.step() + engine.step()
    handles = [first] + [engine.submit(Request(p, settings)) for p in prompts[1:]]
    while engine.busy:
        events += engine.step()
    tokens = {h.id: [] for h in handles}
    for event in events:
        tokens[event.request].append(event.token_id)
    assert [tokens[h.id] for h in handles] == _alone(model, prompts, **options)


def test_requests_admitted_together_are_prefilled_in_groups_and_equal_each_alone(model, monkeypatch):
    """A long request runs while six others arrive: they are prefilled in groups of similar length (one call each)
    into the free slots, and every request's tokens equal its tokens alone."""
    from edgeinfer.lm import engine as engine_module

    engine = model.engine(slots=7, capacity=32)
    groups = []
    real_group = engine._prefill_group
    monkeypatch.setattr(engine, "_prefill_group", lambda slots: groups.append(len(slots)) or real_group(slots))
    _first_then_the_rest_equal_each_alone(model, engine, _prompts(model), max_new_tokens=10)
    # lengths 7,1,4,2,5,1 by the padding bound: 1+1 | 2 | 4+5 | 7, after the first request alone
    assert sorted(groups) == [1, 1, 1, 2, 2]
    assert engine_module.prefill_groups([128] * 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # PREFILL_TOKENS = 512


def test_a_group_in_consecutive_slots_is_prefilled_in_place_in_any_order(model, monkeypatch):
    """Lengths 5, 4, 5 arriving into slots 1-3 form one group ordered by length (slots 2, 1, 3): a host shared
    buffer prefills them straight into their rows, with nothing copied, and each equals its tokens alone."""
    prompts = [[5, 6, 7, 8, 9], [20, 21, 22, 23], [30, 31, 32, 33, 34]]
    prompts = [[t % model.vocab_size for t in p] for p in [[1, 2, 3], *prompts]]
    engine = model.engine(slots=4, capacity=32)
    copied = []
    real_insert = KVCache.insert
    monkeypatch.setattr(KVCache, "insert", lambda cache, *a, **k: copied.append(a) or real_insert(cache, *a, **k))
    _first_then_the_rest_equal_each_alone(model, engine, prompts, max_new_tokens=8)
    assert (copied == []) == engine.cache.can_view_rows


def test_rows_that_reach_the_cache_capacity_end_there_and_free_their_slot(model):
    """Rows of different lengths run into the positions limit at different steps (the old crash)."""
    prompts = _prompts(model)[:5]
    limit = min(model.max_positions, 64)
    new = limit - 2  # longer than any row can go: each ends at the capacity, after (limit - prompt) tokens
    capacity = min(model.max_positions, max(map(len, prompts)) + new)
    expected = _alone(model, prompts, max_new_tokens=new, stop_token_ids=[])
    got = model.generate(prompts, max_active=2, max_new_tokens=new, stop_token_ids=[])
    assert [g.token_ids for g in got] == expected
    for prompt, g in zip(prompts, got):
        assert len(prompt) + len(g.token_ids) <= capacity


def test_five_hundred_prompts_on_thirty_two_slots(lively_bundles):
    model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 97, rng.integers(1, 9)).tolist() for _ in range(500)]
    stops = [3, 30]
    got = model.generate(prompts, max_active=32, max_new_tokens=8, stop_token_ids=stops)
    assert all(g.token_ids and (g.finish_reason == "stop_token") == (g.token_ids[-1] in stops) for g in got)
    for i in rng.choice(500, 12, replace=False):
        assert got[i].token_ids == model.generate([prompts[i]], max_new_tokens=8, stop_token_ids=stops)[0].token_ids


def test_the_default_chat_bundle_batches_past_its_slots():
    chat = edgeinfer.load(default_bundle("chat"), device="cpu")
    got = chat.generate(["你好"] * 3, max_active=2, max_new_tokens=10, stop_token_ids=[], do_sample=False)
    alone = chat.generate(["你好"], max_new_tokens=10, stop_token_ids=[], do_sample=False)[0].token_ids
    assert [g.token_ids for g in got] == [alone] * 3


def test_a_concat_cache_stays_bounded_under_continuous_batching(lively_bundles):
    model = edgeinfer.load(lively_bundles["standard"], device="cpu")
    prompts = [[i % 90 + 1, (7 * i) % 90 + 1] for i in range(30)]
    engine = model.engine(slots=2, capacity=16)
    options = decode_options(model, max_new_tokens=10, stop_token_ids=[])
    handles = [engine.submit(Request(p, options), sink=lambda e: None) for p in prompts]
    widest = 0
    while engine.busy:
        engine.step()
        widest = max(widest, engine.cache.width)
    assert widest < 2 * 16
    expected = _alone(model, prompts, max_new_tokens=10, stop_token_ids=[])
    assert [h.generated for h in handles] == expected


def test_a_step_past_the_capacity_is_refused_and_changes_nothing(lively_bundles):
    model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
    cache = KVCache(model, 1, 4)
    Step(model, cache).feed([[1, 2, 3]])
    with pytest.raises(CapacityError, match="holds 3 of 4 tokens and cannot take 2 more"):
        Step(model, cache).feed([[4, 5]])
    assert cache.lengths.tolist() == [3]


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
def test_committing_a_cache_makes_its_memory_resident_and_keeps_it_empty(lively_bundles):
    model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
    cache = KVCache(model, 2048, 64)  # 2048 rows x 4 buffers x 3 heads x 64 slots x 16 floats: 100 MB, untouched
    size = sum(a.nbytes for a in cache.arrays())
    before = _resident_bytes()
    cache.commit_memory()
    assert _resident_bytes() - before > 0.9 * size
    assert not any(a.any() for a in cache.arrays()) and not cache.lengths.any()


def test_a_started_engine_commits_its_cache_and_moves_its_weights_to_huge_pages(lively_bundles, monkeypatch):
    prepared = []
    monkeypatch.setattr(KVCache, "commit_memory", lambda cache: prepared.append(cache))
    monkeypatch.setattr(CausalLM, "use_huge_pages", lambda model: prepared.append(model))
    model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
    engine = model.engine(slots=2, capacity=64)
    assert prepared == []  # an engine stepped by its caller (generate) touches only what it uses
    engine.start()
    engine.stop(drain=False, timeout=10)
    assert prepared == [engine.cache, model]

# ---------------------------------------------------------------------------------------------- the loop thread
@pytest.fixture()
def running(lively_bundles):
    model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
    engine = model.engine(slots=2, capacity=64, max_queue=4)
    engine.start()
    yield model, engine
    engine.stop(drain=False, timeout=10)


def test_requests_submitted_from_threads_while_others_run(running):
    model, engine = running
    prompts = _prompts(model)[:4]
    options = decode_options(model, max_new_tokens=20, stop_token_ids=[])
    results: dict[int, list[int]] = {}

    def client(i: int) -> None:
        handle = engine.submit(Request(prompts[i], options))
        results[i] = [e.token_id for e in handle.events(timeout=30)]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(4)] == _alone(model, prompts, max_new_tokens=20, stop_token_ids=[])


def test_cancel_mid_stream_frees_the_slot_and_leaves_the_others(running):
    model, engine = running
    prompts = _prompts(model)
    long = decode_options(model, max_new_tokens=40, stop_token_ids=[])
    cancelled = threading.Event()

    def hold(request_id, generated, logits):  # the victim waits after 3 tokens until it is cancelled
        if len(generated) >= 3:
            cancelled.wait(timeout=30)

    victim = engine.submit(Request(prompts[0], decode_options(model, max_new_tokens=40, stop_token_ids=[],
                                                              logits_processor=hold)))
    other = engine.submit(Request(prompts[1], long))
    seen = []
    for event in victim.events(timeout=30):
        seen.append(event)
        if len(seen) == 3:
            victim.cancel()
            cancelled.set()
    assert seen[-1].finished == "cancelled" and seen[-1].token_id is None
    # both slots were taken: the next request can only run in the freed one
    late = engine.submit(Request(prompts[2], decode_options(model, max_new_tokens=5, stop_token_ids=[])))
    assert [e.token_id for e in late.events(timeout=30)] == _alone(model, [prompts[2]], max_new_tokens=5,
                                                                     stop_token_ids=[])[0]
    assert [e.token_id for e in other.events(timeout=30)] == _alone(model, [prompts[1]], max_new_tokens=40,
                                                                      stop_token_ids=[])[0]


def test_a_full_queue_refuses_and_recovers(lively_bundles):
    model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
    engine = model.engine(slots=1, capacity=32, max_queue=2)  # not started: nothing leaves the queue
    options = decode_options(model, max_new_tokens=2, stop_token_ids=[])
    for _ in range(2):
        engine.submit(Request([1, 2], options), sink=lambda e: None)
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        engine.submit(Request([1, 2], options))
    while engine.busy:
        engine.step()
    engine.submit(Request([1, 2], options), sink=lambda e: None)


def test_a_failing_request_fails_alone(running):
    model, engine = running

    def ban_everything(request, generated, logits):
        logits[:] = -np.inf

    bad = engine.submit(Request([5, 6], decode_options(model, max_new_tokens=5, logits_processor=ban_everything)))
    good = engine.submit(Request([5, 6], decode_options(model, max_new_tokens=5, stop_token_ids=[])))
    assert [e.finished for e in bad.events(timeout=30)] == ["error"]
    assert "no finite logits" in str(bad.error)
    assert [e.token_id for e in good.events(timeout=30)] == _alone(model, [[5, 6]], max_new_tokens=5,
                                                                     stop_token_ids=[])[0]
    with pytest.raises(InputError, match="no finite logits"):
        model.generate([[5, 6]], max_new_tokens=3, logits_processor=ban_everything)


# ---------------------------------------------------------------------------------------------- randomness
def test_unseeded_rows_draw_their_own_numbers(lively_bundles):
    model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
    got = model.generate([[5, 6, 7]] * 4, max_new_tokens=12, do_sample=True, stop_token_ids=[])
    assert len({tuple(g.token_ids) for g in got}) == 4


def test_seeded_rows_reproduce_in_any_layout_and_process(lively_bundles):
    model = edgeinfer.load(lively_bundles["standard"], device="cpu")
    options = {"max_new_tokens": 10, "do_sample": True, "stop_token_ids": []}
    prompts = [[5, 6, 7], [9], [5, 6, 7]]
    batched = [g.token_ids for g in model.generate(prompts, seed=[4, 8, 4], **options)]
    one_slot = [g.token_ids for g in model.generate(prompts, seed=[4, 8, 4], max_active=1, **options)]
    alone = model.generate([[5, 6, 7]], seed=4, **options)[0].token_ids
    assert batched == one_slot and batched[0] == batched[2] == alone
    script = ("import edgeinfer, json, sys; m = edgeinfer.load(sys.argv[1], device='cpu'); "
              "print(json.dumps(m.generate([[5, 6, 7]], seed=4, max_new_tokens=10, do_sample=True, "
              "stop_token_ids=[])[0].token_ids))")
    out = subprocess.run([sys.executable, "-c", script, str(lively_bundles["standard"])], capture_output=True,
                         text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == alone


def test_a_tiny_temperature_is_greedy(lively_bundles):
    model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
    greedy = model.generate(PROMPTS[:3], max_new_tokens=8)
    cold = model.generate(PROMPTS[:3], max_new_tokens=8, do_sample=True, temperature=1e-40, seed=1)
    assert [g.token_ids for g in cold] == [g.token_ids for g in greedy]


# ---------------------------------------------------------------------------------------------- the manifest
@pytest.fixture()
def chat_copy(tmp_path):
    folder = tmp_path / "chat"
    shutil.copytree(default_bundle("chat"), folder)
    return folder


def _edit(folder, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_chat_takes_its_defaults_from_the_generation_block(chat_copy):
    shipped = Chat(edgeinfer.load(chat_copy, device="cpu"), seed=1)
    assert shipped.settings.sampling.do_sample and shipped.settings.sampling.top_p == 0.9
    _edit(chat_copy, lambda m: m["generation"].update(do_sample=False, max_new_tokens=3))
    model = edgeinfer.load(chat_copy, device="cpu")
    chat = Chat(model, seed=1)
    assert not chat.settings.sampling.do_sample and chat.settings.max_new_tokens == 3
    replies = {Chat(model, seed=s).reply("你好") for s in range(3)}
    assert len(replies) == 1  # greedy: the seed no longer matters
    tokens = model.encode(replies.pop())
    assert 0 < len(tokens) <= 3
    assert Chat(model, max_new_tokens=5, do_sample=True).settings.max_new_tokens == 5  # callers override


def test_an_unknown_generation_option_or_session_setting_is_refused(chat_copy):
    _edit(chat_copy, lambda m: m["generation"].update(stop="[SEP]"))
    with pytest.raises(BundleError, match="generation.stop' is not a decoding option"):
        edgeinfer.load(chat_copy)
    _edit(chat_copy, lambda m: (m["generation"].pop("stop"), m.update(session={"threds": 1})))
    with pytest.raises(BundleError, match="session.threds' is unknown"):
        edgeinfer.load(chat_copy)


def test_session_settings_come_from_the_manifest_unless_the_caller_says(chat_copy):
    _edit(chat_copy, lambda m: m.update(session={"threads": 1}))
    assert edgeinfer.load(chat_copy, device="cpu").session.get_session_options().intra_op_num_threads == 1
    assert edgeinfer.load(chat_copy, device="cpu", threads=2).session.get_session_options().intra_op_num_threads == 2
