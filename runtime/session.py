"""onnxruntime sessions: provider choice (CUDA when present and asked for, else CPU), the optimized-graph cache, and
bundle checks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .bundle import MAX_THREADS, SIGNED_INT8, first_line, weight_storage
from .errors import BundleError, InputError
from .local_cache import cache_root
from .signals import signals_to_main_thread

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
# onnxruntime load-time fusions that make CPU graphs slower. SkipLayerNormFusion: the fused CPU kernel (1.32) took
# 1.1x the time of Add + Add + LayerNormalization for one row, 1.5x for 16, 1.8-3.8x for 128 and 4x for 1536 rows
# (benchmarks/kernel_choices.py): 5% of a BERT-base forward at 384 tokens. CUDA sessions keep it.
CPU_DISABLED_FUSIONS = ["SkipLayerNormFusion"]
# onnxruntime's CUDA provider computes float32 MatMuls in TF32 unless told not to: logits then differ from the CPU's
# by ~5e-3, beyond the 1e-4 a float32 bundle is exported to. A manifest's session.provider_options may turn it on.
CUDA_DEFAULTS = {"CUDAExecutionProvider": {"use_tf32": "0"}}
# x86 flags (Linux names) with which onnxruntime multiplies uint8 by int8 without saturating
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# Graphs at least this large open from the optimized-graph cache (GraphCache); smaller ones optimize in milliseconds.
CACHE_MIN_BYTES = 32 << 20


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


def open_session(model_path: Path, manifest: dict, device: str = "auto", threads: int | None = None,
                 allow_spinning: bool | None = None):
    """An InferenceSession whose inputs and outputs match the manifest, or a BundleError naming the mismatch.

    Settings, first found wins: the caller's arguments, the EDGEINFER_THREADS and EDGEINFER_ALLOW_SPINNING ("0" or
    "1") environment variables, the manifest's `session` block (threads, allow_spinning, disabled_optimizers,
    provider_options), this module's CPU defaults. allow_spinning false makes onnxruntime's idle intra-op threads
    sleep instead of spin: a little slower on an idle machine, far faster on one whose cores other processes use, or
    other sessions of this process (a main model and its draft model take turns on the same cores).
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
    spin = os.environ.get("EDGEINFER_ALLOW_SPINNING", "")
    if spin not in ("", "0", "1"):
        raise InputError(f"EDGEINFER_ALLOW_SPINNING must be 0 or 1, got {spin!r}")
    if allow_spinning is not None and not isinstance(allow_spinning, bool):
        raise InputError(f"allow_spinning must be True, False or None, got {allow_spinning!r}")
    spin = allow_spinning if allow_spinning is not None else spin == "1" if spin else settings.get("allow_spinning")
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    on_cpu = choice.providers == ["CPUExecutionProvider"]
    if on_cpu:
        check_int8_weights(model_path, manifest)
    disabled = settings.get("disabled_optimizers", CPU_DISABLED_FUSIONS if on_cpu else None)
    provider_options = {**CUDA_DEFAULTS, **settings.get("provider_options", {})}

    def create(path: Path, options):
        return ort.InferenceSession(str(path), options, providers=choice.providers,
                                    provider_options=[provider_options.get(p, {}) for p in choice.providers],
                                    disabled_optimizers=disabled)

    cache = GraphCache.for_session(model_path, manifest, disabled) if on_cpu else None
    try:
        with signals_to_main_thread():  # onnxruntime's thread pool starts here
            session = cache.open(options, create) if cache else create(model_path, options)
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


def check_int8_weights(model_path: Path, manifest: dict) -> None:
    """Refuse signed int8 weights on an x86 CPU whose int8 kernel saturates (no VNNI): its answers would be wrong.
    The flags come from /proc/cpuinfo, so elsewhere than Linux nothing is refused; ARM's kernels do not saturate."""
    if weight_storage(manifest)[0] != SIGNED_INT8:
        return
    flags = _cpu_flags().split()
    if "avx" in flags and not any(flag in flags for flag in VNNI_FLAGS):
        raise BundleError(
            f"{model_path.parent} has signed int8 weights, which onnxruntime computes wrongly on a CPU without VNNI "
            f"(its int8 products saturate); rewrite them as uint8, every number kept: "
            f"python -m edgeinfer.export.quantize unsign {model_path.parent}"
        )


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), part of the cache key: an optimized CPU graph may use what this CPU has."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


@dataclass(frozen=True)
class GraphCache:
    """A CPU bundle graph as onnxruntime optimized it (level ORT_ENABLE_ALL), with its weights as an external data
    file, kept per machine and reopened with optimizations off.

    Why: opening the GPT-2-small graph spends most of its time parsing 500 MB of inline weights and running the
    graph optimizers (folding the tied head's transpose among them); the cached form is memory-mapped and needs
    neither (benchmarks/cold_start.py). The key covers the graph's bytes (its manifest sha256, else size and
    modification time), onnxruntime's version, the disabled optimizers and this CPU's flags, so a stale entry is never
    read; a graph written while another process reads is renamed into place whole.
    """

    model_path: Path
    folder: Path

    @classmethod
    def for_session(cls, model_path: Path, manifest: dict, disabled: list[str] | None) -> GraphCache | None:
        """The cache entry of the bundle graph `model_path`, or None: no cache, or a graph too small to need one."""
        root = cache_root()
        try:
            stat = model_path.stat()
        except OSError:
            return None
        if root is None or stat.st_size < CACHE_MIN_BYTES:
            return None
        ort = onnxruntime()
        digests = manifest.get("sha256")
        digest = digests.get(manifest["files"]["model"]) if isinstance(digests, dict) else None
        source = digest if isinstance(digest, str) else f"{model_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        disabled = tuple(sorted(disabled or ()))
        key = json.dumps([source, ort.__version__, disabled, _cpu_flags()])
        return cls(model_path, root / "graphs" / hashlib.sha256(key.encode()).hexdigest()[:32])

    def open(self, options, create: Callable):
        """`create(path, options)`'s session: on the cached graph with optimizations off when the cache holds it, else
        on the bundle's graph, storing the optimized graph on the way when the cache folder is writable."""
        ort = onnxruntime()
        cached = self.folder / "model.onnx"
        if cached.is_file():
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                return create(cached, options)
            except Exception:  # noqa: BLE001  onnxruntime refused a damaged entry: drop it and optimize again
                shutil.rmtree(self.folder, ignore_errors=True)
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.folder.parent))
        except OSError:
            return create(self.model_path, options)
        try:
            options.optimized_model_filepath = str(work / "model.onnx")
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             "model.onnx.data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            session = create(self.model_path, options)
            try:
                os.replace(work, self.folder)
            except OSError:
                pass  # another process renamed its copy into place first, or the disk is full: this session stands
            return session
        finally:
            shutil.rmtree(work, ignore_errors=True)
