"""Fuzzed `generate`/`stream` calls: every option drawn from values a caller may pass and from junk of many types.

A call with only usable values must succeed with results that keep every promise (token ids in the vocabulary, at
most max_new_tokens, stop tokens and banned tokens where they belong), and, where its tokens are determined (greedy,
seeded or beam search), the same call twice, each prompt alone and the streamed tokens all agree. A call with any
unusable value must be refused with an EdgeInferError: `stream` at the call, not at the first event (unless only a
logits processor fails while decoding). After every call the model gives the same greedy tokens as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from fuzzing import (
    FAILING_PROCESSORS,
    PROFILES,
    Ban,
    ban_all,
    decoding_values,
    fail,
    fuzz,
    is_int,
    rarely,
    values,
    write_nan,
)
from hypothesis import strategies as st

import edgeinfer
from edgeinfer.errors import EdgeInferError, InputError
from edgeinfer.lm import FINISH_REASONS, Request, decode_options
from edgeinfer.loader import BUNDLES

BASELINE = [[1, 2, 3], [4]]
BEAM_ONLY = ("length_penalty", "early_stopping")
NOT_FOR_BEAMS = ("seed", "max_active", "speculate")


# ---------------------------------------------------------------- drawing calls
@dataclass
class Call:
    """One drawn call: its prompts and options, and why it must be refused (no problems: it must succeed)."""

    prompts: object
    options: dict
    problems: list[str] = field(default_factory=list)
    late: bool = False  # every problem shows only while decoding (a failing logits processor)

    @property
    def beams(self) -> bool:
        return self.options.get("num_beams", 1) not in (1, None)


def front_door_values(model, prompts: list, id_prompts: bool) -> dict[str, tuple[st.SearchStrategy, st.SearchStrategy]]:
    """(usable, unusable) values of the options of `generate`/`stream` themselves, for these prompts."""
    n = len(prompts)
    segments = max(model.manifest["model"].get("n_segments") or 0, 1)
    found = {
        "seed": values(st.one_of(st.integers(0, 2**64), st.just(np.uint64(7)),
                                 st.lists(st.integers(0, 9), min_size=n, max_size=n)),
                       [-1, 1.5, "1", True, math.nan, [0] * (n + 1), [-1] * n]),
        "num_return_sequences": values(st.integers(1, 3), [0, -1, 65, 10**9, 2.0, True, "2"]),
        "max_active": values(st.integers(1, 4), [0, -1, 2.0, "2", True]),
        "speculate": values(st.integers(0, 4), [-1, 17, 2.0, "2", True]),
        "reply_segment": values(st.one_of(st.integers(0, segments - 1),
                                          st.lists(st.integers(0, segments - 1), min_size=n, max_size=n)),
                                [segments, -1, [0] * (n + 1), [segments] * n, None, 0.5, "0"]),
        "prefix": values([model.prefill([1, 2])], ["x", 5, [1, 2]]),
        "num_beams": values(st.integers(1, 3), [0, -1, 65, 2.5, True, "2"]),
        "length_penalty": values(st.one_of(st.floats(-3, 3), st.just(100)), [math.nan, math.inf, 1e300, 10**400,
                                                                               "1", True]),
        "early_stopping": values([True, False, np.bool_(True)], ["no", 0, 1, []]),
    }
    if id_prompts:  # text prompts have no token count before they are encoded
        lengths = [len(p) for p in prompts]
        found["segment_ids"] = values(
            st.tuples(*(st.lists(st.integers(0, segments - 1), min_size=k, max_size=k) for k in lengths)).map(list),
            [[[0] * (k + 1) for k in lengths], [[segments] * k for k in lengths], [[0.5] * k for k in lengths],
             5, [5] * len(lengths)])
    return found


def prompt_values(model, alphabet: str) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    """(usable, unusable) single prompts: token ids as a list, tuple or array, or text with a tokenizer."""
    vocab = model.vocab_size
    ids = st.lists(st.integers(0, vocab - 1), min_size=1, max_size=5)
    usable = [ids, ids.map(tuple), ids.map(lambda t: np.array(t, dtype=np.int64))]
    unusable = [[], [-1], [vocab], [1.5], [True], [[1, 2]], np.array([[1]]), np.array([1.5]), "", None, 5, b"ab"]
    if model.tokenizer is None:
        unusable.append("text")
    else:
        unusable.append("a\udcffb")  # a lone surrogate: bytes that were not UTF-8
        usable.append(st.text(alphabet, min_size=1, max_size=6))
    return st.one_of(usable), st.sampled_from(unusable)


def combination_problems(model, options: dict) -> list[str]:
    """Why usable values cannot go together: min over max, options of beam search alone or not for it."""
    found = []
    defaults = model.manifest.get("generation", {})
    max_new, min_new = options.get("max_new_tokens", defaults.get("max_new_tokens", 32)), options.get("min_new_tokens", 0)
    if is_int(max_new) and is_int(min_new) and min_new > max_new:
        found.append("min_new_tokens > max_new_tokens")
    beams = options.get("num_beams", 1)
    if is_int(beams) and beams > 1:
        if options.get("do_sample") is True:
            found.append("do_sample with beam search")
        if options.get("num_return_sequences", 1) != 1:
            found.append("num_return_sequences with beam search")
        found += [f"{name} with beam search" for name in NOT_FOR_BEAMS if name in options]
    elif beams == 1:
        found += [f"{name} without beam search" for name in BEAM_ONLY if name in options]
    return found


@st.composite
def calls(draw, model, alphabet: str) -> Call:
    """A generate/stream call of one of three kinds: every value usable; about one prompt in eight, one prompt list
    in ten and one option value in four unusable; every value usable but the logits processor, one that fails."""
    kind = draw(st.sampled_from(["usable", "unusable", "usable", "failing processor"]))

    def unusable(one_in: int) -> bool:
        return kind == "unusable" and rarely(draw, one_in)

    call = Call(prompts=None, options={})
    good_prompt, bad_prompt = prompt_values(model, alphabet)
    prompts = []
    for _ in range(draw(st.integers(1, 3))):
        if unusable(8):
            prompts.append(draw(bad_prompt))
            call.problems.append(f"prompt {prompts[-1]!r}")
        else:
            prompts.append(draw(good_prompt))
    if unusable(10):
        call.prompts = draw(st.sampled_from(["abc", [], None]))
        call.problems.append(f"prompts {call.prompts!r}")
    else:
        call.prompts = draw(st.sampled_from([prompts, tuple(prompts)]))
    id_prompts = all(isinstance(p, (list, tuple, np.ndarray)) for p in prompts)
    table = decoding_values(model, alphabet) | front_door_values(model, prompts, id_prompts)
    failing = kind == "failing processor"
    for name in draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=5)):
        usable, bad = table[name]
        if not unusable(4):
            call.options[name] = draw(usable)
            continue
        call.options[name] = draw(bad)
        if call.options[name] in FAILING_PROCESSORS:
            failing = True
        else:
            call.problems.append(f"{name}={call.options[name]!r}")
    if kind == "failing processor":
        call.options["logits_processor"] = draw(st.sampled_from(FAILING_PROCESSORS))
    call.problems += combination_problems(model, call.options)
    call.late = failing and not call.problems
    if failing:
        call.problems.append("a logits processor that fails")
    return call


# ---------------------------------------------------------------- what results must satisfy
def effective(model, options: dict) -> dict:
    """max_new_tokens, min_new_tokens and stop tokens of a usable call: its options over the bundle's defaults."""
    defaults = model.manifest.get("generation", {})
    eos = model.manifest["special_tokens"].get("eos")
    stops = options.get("stop_token_ids", defaults.get("stop_token_ids", [] if eos is None else [eos]))
    strings = options.get("stop_strings", [])
    return {"max_new": int(options.get("max_new_tokens", defaults.get("max_new_tokens", 32))),
            "min_new": int(options.get("min_new_tokens", defaults.get("min_new_tokens", 0))),
            "stops": {int(t) for t in stops}, "strings": [strings] if isinstance(strings, str) else list(strings)}


def check_results(model, call: Call, results: list) -> None:
    n = 1 if call.beams else call.options.get("num_return_sequences", 1)
    assert len(results) == len(call.prompts) * n
    rules = effective(model, call.options)
    processor = call.options.get("logits_processor")
    banned = processor.tokens if isinstance(processor, Ban) else frozenset()
    for result in results:
        ids = result.token_ids
        assert 1 <= len(ids) <= rules["max_new"] and all(0 <= t < model.vocab_size for t in ids), result
        assert result.finish_reason in FINISH_REASONS[:3], result
        assert not banned & set(ids), result
        stopped_at = [i for i, t in enumerate(ids) if t in rules["stops"]]
        assert stopped_at in ([], [len(ids) - 1]) and (result.finish_reason == "stop_token") == bool(stopped_at)
        assert not stopped_at or stopped_at[0] >= rules["min_new"], result
        if result.finish_reason == "stop_string":
            assert any(s in result.text for s in rules["strings"]), result
        if result.finish_reason == "length":
            assert len(ids) == rules["max_new"], result
        if call.beams:
            assert math.isfinite(result.score), result


def sampled(model, call: Call) -> bool:
    return not call.beams and call.options.get("do_sample", model.manifest.get("generation", {}).get("do_sample", False))


def determined(model, call: Call) -> bool:
    """Whether a usable call's tokens are fixed: greedy, seeded or beam search."""
    return not sampled(model, call) or "seed" in call.options


def alone(call: Call, i: int) -> dict:
    """The options of prompt `i` on its own: its own entry of per-prompt options."""
    options = dict(call.options)
    for name in ("seed", "segment_ids", "reply_segment"):
        if isinstance(options.get(name), list):
            options[name] = [options[name][i]]
    return options


def tokens(results: list) -> list[list[int]]:
    return [r.token_ids for r in results]


def streamed(events) -> list[list[int]]:
    found: dict[int, list[int]] = {}
    for event in events:
        found.setdefault(event.request, []).append(event.token_id)
    return [found[i] for i in sorted(found)]


def greedy(model) -> list[list[int]]:
    return tokens(model.generate([[t % model.vocab_size for t in p] for p in BASELINE], max_new_tokens=4,
                                 do_sample=False, stop_token_ids=[]))


def check_call(model, call: Call) -> None:
    """The property of one drawn call (see the module docstring)."""
    stream_options = not any(name in call.options for name in ("num_beams", *BEAM_ONLY))
    if call.problems:
        with pytest.raises(EdgeInferError):
            model.generate(call.prompts, **call.options)
        if stream_options and call.late:
            events = model.stream(call.prompts, **call.options)
            with pytest.raises(InputError, match="logits"):
                list(events)
        elif stream_options:
            with pytest.raises(EdgeInferError):
                model.stream(call.prompts, **call.options)
        return
    results = model.generate(call.prompts, **call.options)
    check_results(model, call, results)
    if not determined(model, call):
        return
    assert tokens(model.generate(call.prompts, **call.options)) == tokens(results)
    n = len(results) // len(call.prompts)
    if sampled(model, call) and call.options.get("speculate"):
        return  # speculative sampling keeps the distribution, not the draws: a row alone speculates, in a batch not
    for i, prompt in enumerate(call.prompts):
        assert tokens(model.generate([prompt], **alone(call, i))) == tokens(results[i * n : (i + 1) * n])
    if stream_options:
        assert streamed(model.stream(call.prompts, **call.options)) == tokens(results)


# ---------------------------------------------------------------- the tests
MODELS = {"standard": "0123456789", "contrib": "0123456789", "chat": "你好世界hello", "query_key": "abcdefghi0123456789"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def decoder(request, lively_bundles, query_key_bundle):
    folder = {**lively_bundles, "query_key": query_key_bundle}.get(request.param) or BUNDLES / request.param
    model = edgeinfer.load(folder, device="cpu")
    return model, MODELS[request.param]


@PROFILES
def test_generate_and_stream_options(decoder, scale):
    model, alphabet = decoder
    before = greedy(model)

    @fuzz(60 * scale, calls(model, alphabet))
    def check(call):
        check_call(model, call)
        assert greedy(model) == before  # no refused or finished call leaves anything behind

    check()


# ---------------------------------------------------------------- findings
@pytest.fixture(scope="module")
def chat_model():
    return edgeinfer.load(BUNDLES / "chat", device="cpu")


def test_stop_token_ids_as_a_zero_dimensional_array_are_refused(chat_model):
    """Iterating np.array(5) raised a TypeError."""
    with pytest.raises(InputError, match="stop_token_ids must be a list of token ids"):
        chat_model.generate(["你好"], stop_token_ids=np.array(5))


def test_an_extreme_repetition_penalty_still_decodes(chat_model):
    """A seen token's logit divided by 1e-300 overflowed to inf, and the row was refused for having no finite logit."""
    for penalty in (1e-300, 1e300):
        for sampled in (False, True):
            [result] = chat_model.generate([[101, 872, 1962]], max_new_tokens=4, repetition_penalty=penalty,
                                           do_sample=sampled, seed=0, stop_token_ids=[])
            assert len(result.token_ids) == 4


def test_a_temperature_below_float32s_range_samples_the_best_token(chat_model):
    """1e-300 became 0 in the float32 logits: 0 / 0 made every probability NaN, and token 0 came out every step."""
    from edgeinfer.lm.sampling import SamplingOptions, probabilities

    logits = np.array([[1.0, 3.0, 3.0, -2.0]], dtype=np.float32)
    with np.errstate(all="raise"):
        probs = probabilities(logits, SamplingOptions(do_sample=True, temperature=1e-300))
    assert probs.tolist() == [[0.0, 0.5, 0.5, 0.0]]
    [greedy] = chat_model.generate([[101, 872, 1962]], max_new_tokens=4, do_sample=False, stop_token_ids=[])
    [sampled] = chat_model.generate([[101, 872, 1962]], max_new_tokens=4, do_sample=True, temperature=1e-300, seed=0,
                                    stop_token_ids=[])
    assert sampled.token_ids == greedy.token_ids


@pytest.mark.parametrize(("options", "message"), [
    ({"length_penalty": 10**9}, "length_penalty must be a number in"),  # length ** 10**9 overflowed (or hung)
    ({"length_penalty": math.nan}, "length_penalty must be a number in"),
    ({"early_stopping": "no"}, "early_stopping must be true or false"),  # any value was taken for its truth
    ({"do_sample": 0}, "do_sample must be true or false"),  # any false value passed unchecked
    ({"do_sample": True}, "do_sample does not apply to beam search"),
    ({"seed": 0}, "seed does not apply to beam search"),  # 0 and 1 were accepted, 5 refused
    ({"num_return_sequences": True}, "one sequence per prompt"),
])
def test_beam_search_checks_its_options(chat_model, options, message):
    with pytest.raises(InputError, match=message):
        chat_model.generate([[101, 872]], num_beams=2, max_new_tokens=3, **options)


@pytest.mark.parametrize(("processor", "message"), [
    (fail, "logits_processor raised ValueError"),  # raised the processor's own ValueError
    (ban_all, "no finite logits left"),  # returned tokens chosen from nothing
    (write_nan, "no finite logits left"),
])
def test_a_failing_processor_fails_beam_search_with_an_input_error(chat_model, processor, message):
    with pytest.raises(InputError, match=message):
        chat_model.generate([[101, 872]], num_beams=2, max_new_tokens=3, logits_processor=processor)


def test_score_refuses_junk_and_foreign_prefixes_and_positions_past_the_model(chat_model):
    """A junk prefix raised an AttributeError; another model's prefix or a candidate past the last position raised
    onnxruntime's own error."""
    xiangqi = edgeinfer.load(BUNDLES / "xiangqi-chars", device="cpu")
    for prefix in ("x", chat_model.prefill([101, 872])):
        with pytest.raises(InputError, match="prefix must be a Prefix from this model's prefill"):
            xiangqi.score(prefix, [[1, 2]])
    positions = xiangqi.max_positions
    with pytest.raises(InputError, match=f"a prefix of {positions - 4} tokens and candidates of 10 leave the model's "
                                         f"{positions}"):
        xiangqi.score(xiangqi.prefill([1] * (positions - 4)), [[1] * 10])
    assert xiangqi.score(xiangqi.prefill([1] * (positions - 4)), [[1] * 5]).shape == (1,)  # the last token is never fed
    with pytest.raises(InputError, match=f"a prompt of {positions - 4} tokens and candidates of 10 leave the model's "
                                         f"{positions}"):
        xiangqi.score_prompt([1] * (positions - 4), [[1] * 10])
    assert xiangqi.score_prompt([1] * (positions - 4), [[1] * 5]) == pytest.approx(
        xiangqi.score(xiangqi.prefill([1] * (positions - 4)), [[1] * 5]), abs=1e-5)
    for prompt, message in (([1] * 3, "reads its first 91 tokens together"), ([99] * 91, r"outside \[0, 36\)"), ([1.5] * 91, "integers")):
        with pytest.raises(InputError, match=message):
            xiangqi.score_prompt(prompt, [[1, 2]])


@pytest.mark.parametrize("prompt", ["\udcff", "a\udcffb"])
def test_text_with_a_lone_surrogate_is_refused(chat_model, prompt):
    """Tokenizers raised a TypeError on it."""
    with pytest.raises(InputError):
        chat_model.generate([prompt], max_new_tokens=2)


@pytest.mark.parametrize("options", [{"segment_ids": 5}, {"segment_ids": [5]}, {"reply_segment": None},
                                     {"reply_segment": 0.5}])
def test_segments_of_the_wrong_shape_are_refused(chat_model, options):
    """Rows of segment_ids and a reply_segment that is not a list were iterated unchecked: a TypeError."""
    with pytest.raises(InputError):
        chat_model.generate([[101, 872]], max_new_tokens=2, **options)


@pytest.mark.parametrize("options", [{"prefix": "x"}, {"segment_ids": 5}])
def test_prefill_refuses_junk(chat_model, options):
    """An AttributeError on a junk prefix, a TypeError on segment_ids that are not a list."""
    with pytest.raises(InputError):
        chat_model.prefill([101, 872], **options)


@pytest.mark.parametrize("beams", [1, 2])
def test_a_prefix_of_another_model_is_refused(chat_model, beams):
    """Another model's cache failed inside onnxruntime with its own RuntimeError."""
    xiangqi = edgeinfer.load(BUNDLES / "xiangqi-chars", device="cpu")
    with pytest.raises(InputError):
        xiangqi.generate([[1, 2]], max_new_tokens=2, num_beams=beams, prefix=chat_model.prefill([101, 872, 1962]))


@pytest.mark.parametrize("arguments", [{"slots": 10**12}, {"slots": 2, "capacity": "5"}, {"slots": 1, "max_queue": "x"}])
def test_engine_arguments_are_checked(chat_model, arguments):
    """10**12 slots tried to allocate 7 TiB; a capacity or max_queue that is not a number raised a TypeError."""
    with pytest.raises(EdgeInferError):
        engine = chat_model.engine(**arguments)
        engine.submit(Request([101, 872], decode_options(chat_model)))


@pytest.mark.parametrize("arguments", [{"attention_mask": "ab"}, {"attention_mask": [[1], [1, 1]]},
                                       {"token_type_ids": [[0], [0, 1]]}])
def test_logits_refuses_junk_masks_and_segments(chat_model, arguments):
    """numpy's conversion of them raised a ValueError."""
    with pytest.raises(InputError):
        chat_model.logits([[101, 872]], **arguments)
