"""The CUDA path (KV cache in device memory, IO binding) against the CPU path on the same bundles.

The comparisons run only where onnxruntime-gpu opens a CUDA session (`pip install -e '.[gpu,export,dev]'` on a
GPU machine) and skip elsewhere, so CPU-only CI never needs a GPU; the warning test runs everywhere.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import edgeinfer

pytest.importorskip("torch")

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [1], [40, 41, 42, 43]]


@pytest.fixture(scope="module", params=["standard", "contrib"])
def pair(request, lively_bundles):
    """(CPU model, CUDA model) of one bundle."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider")
    cuda = edgeinfer.load(lively_bundles[request.param], device="cuda")
    if cuda.provider != "CUDAExecutionProvider":
        pytest.skip(f"no CUDA session: {cuda.providers.reason}")
    return edgeinfer.load(lively_bundles[request.param], device="cpu"), cuda


def test_logits_match_cpu(pair):
    cpu, cuda = pair
    ids = np.array([[3, 14, 15, 92, 65, 35, 89, 79]])
    np.testing.assert_allclose(cuda.logits(ids), cpu.logits(ids), atol=1e-4, rtol=1e-4)  # TF32 off: float32 throughout


def test_greedy_sampled_and_beam_tokens_match_cpu(pair):
    cpu, cuda = pair
    for options in ({"max_new_tokens": 12},
                    {"max_new_tokens": 9, "do_sample": True, "top_k": 20, "top_p": 0.9, "seed": [1, 2, 3, 4]},
                    {"max_new_tokens": 6, "num_beams": 3}):
        prompts = PROMPTS[:1] if "num_beams" in options else PROMPTS
        expected = [r.token_ids for r in cpu.generate(prompts, **options)]
        assert [r.token_ids for r in cuda.generate(prompts, **options)] == expected, options


def test_continuous_batching_and_prefix_reuse_match_cpu(pair):
    """Rows joining a running batch and forks of a kept prefix go through the host on CUDA."""
    cpu, cuda = pair
    prompts = [[i + 1, i + 2, (3 * i) % 90] for i in range(5)]
    runs = {}
    for name, model in (("cpu", cpu), ("cuda", cuda)):
        joined = [e.token_id for e in model.stream(prompts, max_new_tokens=7, max_active=2)]
        prefix = model.prefill([3, 14, 15, 92, 65, 35])
        forks = [r.token_ids for r in model.generate([[1], [2, 3]], prefix=prefix, max_new_tokens=5)]
        runs[name] = (joined, forks)
    assert runs["cuda"] == runs["cpu"]


@pytest.mark.parametrize("target", ["standard", "contrib"])
def test_float32_group_query_attention_on_cuda_warns(lively_bundles, monkeypatch, target):
    """onnxruntime has no float32 CUDA GroupQueryAttention: a contrib bundle says so when it lands on CUDA."""
    from edgeinfer.lm import model as causal_lm
    from edgeinfer.session import ProviderChoice

    open_cpu = causal_lm.open_session

    def cuda_session(path, manifest, device, threads, allow_spinning=None):  # a CPU session, reported as a CUDA one
        session, _ = open_cpu(path, manifest, "cpu", threads, allow_spinning)
        return session, ProviderChoice(["CUDAExecutionProvider", "CPUExecutionProvider"], "pretend")

    monkeypatch.setattr(causal_lm, "open_session", cuda_session)
    monkeypatch.setattr(causal_lm, "check_decoder_graph", lambda model: None)  # its probe step needs a real CUDA session
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = edgeinfer.load(lively_bundles[target])
    assert model.device_type == "cuda"
    assert model.cache_device == ("cpu" if target == "contrib" else "cuda")  # the cache lives where attention runs
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == ([causal_lm.CONTRIB_ON_CUDA] if target == "contrib" else [])


@pytest.fixture(scope="module")
def float16_bundles(lively_gpt2, tmp_path_factory):
    """{"gpt2": path, "llama": path}: contrib bundles exported with --quantize float16."""
    from test_llama_export import tiny_llama

    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    root = tmp_path_factory.mktemp("float16")
    export_hf_checkpoint(lively_gpt2, root / "gpt2", attention="contrib", quantize="float16")
    export_hf_checkpoint(tiny_llama("qwen2", 1), root / "llama", attention="contrib", quantize="float16")
    return {"gpt2": root / "gpt2", "llama": root / "llama"}


def test_a_float16_contrib_bundle_keeps_its_cache_on_cuda_without_warning(float16_bundles, monkeypatch):
    from edgeinfer.lm import model as causal_lm
    from edgeinfer.session import ProviderChoice

    open_cpu = causal_lm.open_session

    def cuda_session(path, manifest, device, threads, allow_spinning=None):  # a CPU session, reported as a CUDA one
        session, _ = open_cpu(path, manifest, "cpu", threads, allow_spinning)
        return session, ProviderChoice(["CUDAExecutionProvider", "CPUExecutionProvider"], "pretend")

    monkeypatch.setattr(causal_lm, "open_session", cuda_session)
    monkeypatch.setattr(causal_lm, "check_decoder_graph", lambda model: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = edgeinfer.load(float16_bundles["gpt2"])
    assert model.cache_device == "cuda" and model.cache_dtype == np.float16
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_float16_bundles_on_cuda_match_cpu(float16_bundles, name):
    """GroupQueryAttention's CUDA kernel (float16 only) against the same float16 graph on onnxruntime's CPU kernels."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider")
    cuda = edgeinfer.load(float16_bundles[name], device="cuda")
    if cuda.provider != "CUDAExecutionProvider":
        pytest.skip(f"no CUDA session: {cuda.providers.reason}")
    cpu = edgeinfer.load(float16_bundles[name], device="cpu")
    assert cuda.cache_device == "cuda"
    ids = np.array([[3, 14, 15, 92, 65, 35, 89, 79]])
    want = cpu.logits(ids)
    assert np.abs(cuda.logits(ids) - want).max() <= 1e-2 * np.abs(want).max()  # float16 sums in another order
    options = {"max_new_tokens": 12, "do_sample": False, "stop_token_ids": []}
    for row, generation in zip(PROMPTS, cuda.generate(PROMPTS, **options), strict=True):  # consistent with its logits
        ids = list(row)
        for _ in range(12):
            ids.append(int(cuda.logits(np.array([ids]))[0, -1].argmax()))
        assert generation.token_ids == ids[len(row):]


@pytest.fixture(scope="module", params=["llama-gqa2-standard", "qwen2-gqa1-contrib"])
def llama_pair(request, tmp_path_factory):
    """(CPU model, CUDA model) of a tiny Llama-family bundle: rotary and grouped-query attention on CUDA."""
    import onnxruntime as ort
    from test_llama_export import tiny_llama

    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider")
    kind, kv_heads, target = {"llama-gqa2-standard": ("llama", 2, "standard"),
                              "qwen2-gqa1-contrib": ("qwen2", 1, "contrib")}[request.param]
    folder = tmp_path_factory.mktemp("llama-cuda") / request.param
    export_hf_checkpoint(tiny_llama(kind, kv_heads), folder, attention=target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the float32 GroupQueryAttention warning, tested above
        cuda = edgeinfer.load(folder, device="cuda")
    return edgeinfer.load(folder, device="cpu"), cuda


def test_llama_family_logits_and_tokens_match_cpu(llama_pair):
    cpu, cuda = llama_pair
    ids = np.array([[3, 14, 15, 92, 65, 35, 89, 79]])
    np.testing.assert_allclose(cuda.logits(ids), cpu.logits(ids), atol=1e-4, rtol=1e-4)
    options = {"max_new_tokens": 12, "do_sample": False, "stop_token_ids": []}
    assert [g.token_ids for g in cuda.generate(PROMPTS, **options)] == \
        [g.token_ids for g in cpu.generate(PROMPTS, **options)]


def test_speculative_greedy_on_cuda_equals_plain_greedy_on_cpu(pair):
    cpu, cuda = pair
    options = {"max_new_tokens": 24, "do_sample": False, "stop_token_ids": []}
    loopy = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 9, 9, 9]]
    expected = [cpu.generate([p], **options)[0].token_ids for p in loopy]
    assert [cuda.generate([p], speculate=5, **options)[0].token_ids for p in loopy] == expected
    assert [g.token_ids for g in cuda.generate(loopy, speculate=5, **options)] == expected
