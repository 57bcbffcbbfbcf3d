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

    def cuda_session(path, manifest, device, threads):  # a CPU session, reported as a CUDA one
        session, _ = open_cpu(path, manifest, "cpu", threads)
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
