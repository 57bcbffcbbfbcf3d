"""onnxruntime sessions: provider choice (CUDA when present and asked for, else CPU) and bundle checks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .bundle import MAX_THREADS, first_line
from .errors import BundleError, InputError
from .signals import signals_to_main_thread

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
# onnxruntime load-time fusions that make CPU graphs slower. SkipLayerNormFusion: the fused CPU kernel (1.32) took
# 1.1x the time of Add + Add + LayerNormalization for one row, 1.5x for 16, 1.8-3.8x for 128 and 4x for 1536 rows
# (benchmarks/kernel_choices.py): 5% of a BERT-base forward at 384 tokens. CUDA sessions keep it.
CPU_DISABLED_FUSIONS = ["SkipLayerNormFusion"]
# onnxruntime's CUDA provider computes float32 MatMuls in TF32 unless told not to: logits then differ from the CPU's
# by ~5e-3, beyond the 1e-4 a float32 bundle is exported to. A manifest's session.provider_options may turn it on.
CUDA_DEFAULTS = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def onnxruntime():
    """The onnxruntime module; it comes from the [cpu] or the [gpu] extra (one of them: both write one folder)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise InputError("onnxruntime is not installed: pip install 'edgeinfer[cpu]', or 'edgeinfer[gpu]' for CUDA "
                         f"({exc})") from exc
    return ort


@dataclass(frozen=True)
class ProviderChoice:
    providers: list[str]
    reason: str

    @property
    def name(self) -> str:
        return self.providers[0]


def choose_providers(device: str = "auto") -> ProviderChoice:
    """Pick execution providers for `device` ("auto", "cpu" or "cuda") and say why."""
    ort = onnxruntime()

    if device not in PROVIDER_CHOICES:
        raise InputError(f"device must be one of {', '.join(PROVIDER_CHOICES)}, got {device!r}")
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cpu":
        return ProviderChoice(["CPUExecutionProvider"], "CPU asked for")
    if has_cuda:
        return ProviderChoice(["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDA provider available")
    why = "this onnxruntime build has no CUDA provider (install edgeinfer[gpu] on a GPU machine)"
    if device == "cuda":
        raise InputError(f"CUDA asked for, but {why}")
    return ProviderChoice(["CPUExecutionProvider"], f"CPU: {why}")


def open_session(model_path: Path, manifest: dict, device: str = "auto", threads: int | None = None):
    """An InferenceSession whose inputs and outputs match the manifest, or a BundleError naming the mismatch.

    Settings, first found wins: the caller's arguments, the EDGEINFER_THREADS environment variable (threads), the
    manifest's `session` block (threads, disabled_optimizers, provider_options), this module's CPU defaults.
    """
    ort = onnxruntime()

    if threads is not None and not (isinstance(threads, int) and not isinstance(threads, bool)
                                    and 0 <= threads <= MAX_THREADS):
        raise InputError(f"threads must be an integer from 0 (onnxruntime's choice) to {MAX_THREADS}, got {threads!r}")
    choice = choose_providers(device)
    settings = manifest.get("session", {})
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    from_env = os.environ.get("EDGEINFER_THREADS", "")
    if from_env.isascii() and from_env.isdigit() and int(from_env) > MAX_THREADS:
        raise InputError(f"EDGEINFER_THREADS must be at most {MAX_THREADS}, got {from_env}")
    threads = threads or (int(from_env) if from_env.isascii() and from_env.isdigit() else 0) or settings.get("threads")
    if threads:
        options.intra_op_num_threads = threads
    on_cpu = choice.providers == ["CPUExecutionProvider"]
    disabled = settings.get("disabled_optimizers", CPU_DISABLED_FUSIONS if on_cpu else None)
    provider_options = {**CUDA_DEFAULTS, **settings.get("provider_options", {})}
    try:
        with signals_to_main_thread():  # onnxruntime's thread pool starts here
            session = ort.InferenceSession(str(model_path), options, providers=choice.providers,
                                           provider_options=[provider_options.get(p, {}) for p in choice.providers],
                                           disabled_optimizers=disabled)
    except Exception as exc:  # onnxruntime raises several unrelated types for unreadable models
        raise BundleError(f"onnxruntime cannot load {model_path}: {first_line(exc)}") from exc
    for side, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        expected = [spec["name"] for spec in manifest[side]]
        got = [value.name for value in actual]
        if sorted(expected) != sorted(got):
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            raise BundleError(
                f"{model_path.name} {side} do not match the manifest: missing {missing or 'none'}, "
                f"unexpected {extra or 'none'}"
            )
    used = session.get_providers()[0]
    reason = choice.reason if used == choice.name else f"{choice.name} failed to start; fell back to {used}"
    return session, ProviderChoice(session.get_providers(), reason)
