"""Which onnxruntime CPU kernels pay on this machine: int8 through VNNI or AMX, and the bf16 / int8 compute types of
int4 weights, for a decode step's GEMV and for the QA encoder's batched GEMMs.

    python benchmarks/cpu_features.py [--threads 2] [--repeats 7] [--batches 8 32]

1. The CPU's flags (avx512_vnni, avx512_bf16, amx_int8, amx_bf16) and whether onnxruntime asks Linux for the AMX
   tile state: arch_prctl ARCH_GET_XCOMP_PERM (XTILEDATA, bit 18, is among a process's permitted features once it
   has asked), read in a fresh interpreter before any import, after importing numpy, and after onnxruntime ran an
   int8 GEMM.
2. One MatMul node, fp32 against its int8 (DynamicQuantizeMatMul; uint8 weights as exported, and "int8 signed", the
   same numbers as int8 weights: `python -m edgeinfer.export.quantize sign`) and int4 (MatMulNBits, each accuracy level: 1 fp32,
   2 fp16, 3 bf16, 4 int8 compute) forms made by `edgeinfer.export.quantize`, at a decode shape (1 x 768 @ 768 x 3072)
   and an encoder shape (8 windows of 384 tokens: 3072 x 768 @ 768 x 3072): median ms and GOPS. VNNI does 4x
   fp32's multiply-adds per instruction; AMX's tiles are several times beyond that.
3. The QA encoder at BERT-base shape (random weights, seed 0; benchmarks/qa_peers.py's checkpoint) on batches of
   384-token windows: windows/s of fp32, int8 and int4 (accuracy 3 and 4), and whether each picks the same best span
   as fp32 on every window.
Writes results/cpu_features.{json,md} (`--name`: another file name, for another machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.export.quantize import quantize_int4, quantize_int8, shift_model_weights

RESULTS = Path(__file__).parent / "results"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
ARCH_GET_XCOMP_PERM, XFEATURE_XTILEDATA, SYS_ARCH_PRCTL = 0x1022, 18, 158
SHAPES = {"decode (1x768 @ 768x3072)": (1, 768, 3072), "encoder (3072x768 @ 768x3072)": (3072, 768, 3072)}


def cpu_flags() -> dict[str, bool]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {flag: flag in found for flag in FLAGS}


def amx_stages(folder: Path) -> dict[str, bool | None]:
    """AMX permission in a fresh interpreter: before any import, after numpy, after an onnxruntime int8 GEMM (None:
    the call does not exist here)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return {}
    bare = ("import ctypes, json\nm = ctypes.c_uint64(0)\n"
            f"ok = ctypes.CDLL(None).syscall({SYS_ARCH_PRCTL}, {ARCH_GET_XCOMP_PERM}, ctypes.byref(m)) == 0\n"
            f"print(json.dumps(bool(m.value >> {XFEATURE_XTILEDATA} & 1) if ok else None))")
    stages = {"no imports": bare,
              "numpy imported": "import numpy\n" + bare,
              "onnxruntime int8 GEMM run": (
                  f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nimport numpy as np\n"
                  "from pathlib import Path\nimport cpu_features as c\n"
                  f"s = c.session(Path({str(folder / 'probe-int8.onnx')!r}), 1)\n"
                  "s.run(None, {'x': np.ones((64, 768), np.float32)})\n" + bare)}
    src = folder / "probe.onnx"
    matmul_model(src, 768, 768)
    quantize_int8(src, folder / "probe-int8.onnx")
    shift_model_weights(folder / "probe-int8.onnx", signed=True)  # onnxruntime's AMX kernel takes int8 weights only
    return {stage: json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                             check=True).stdout) for stage, code in stages.items()}


def matmul_model(path: Path, k: int, n: int) -> None:
    weight = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32) * 0.05
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_ms(run, repeats: int) -> float:
    run()  # warm-up: prepacking, thread pool
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def variants(src: Path, folder: Path, int4_levels: tuple[int, ...] = (1, 2, 3, 4)) -> dict[str, Path]:
    """fp32, int8 (uint8 weights, as exported, and the same numbers as int8 weights) and int4 at the given accuracy
    levels, of the graph at `src`."""
    out = {"fp32": src, "int8": folder / f"{src.stem}-int8.onnx", "int8 signed": folder / f"{src.stem}-int8-signed.onnx"}
    quantize_int8(src, out["int8"])
    shutil.copyfile(out["int8"], out["int8 signed"])
    shift_model_weights(out["int8 signed"], signed=True)
    for level in int4_levels:
        out[f"int4 acc{level}"] = folder / f"{src.stem}-int4-acc{level}.onnx"
        quantize_int4(src, out[f"int4 acc{level}"], accuracy_level=level)
    return out


def gemm_rows(folder: Path, threads: int, repeats: int) -> list[dict]:
    rows = []
    for label, (m, k, n) in SHAPES.items():
        src = folder / f"gemm-{k}x{n}.onnx"
        matmul_model(src, k, n)
        x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
        reference = None
        for name, path in variants(src, folder).items():
            sess = session(path, threads)
            y = sess.run(None, {"x": x})[0]
            reference = y if reference is None else reference
            ms = median_ms(lambda sess=sess, x=x: sess.run(None, {"x": x}), repeats)
            rows.append({"shape": label, "kernel": name, "ms": round(ms, 3), "gops": round(2 * m * k * n / ms / 1e6, 1),
                         "rel_err": float(np.abs(y - reference).max() / np.abs(reference).max())})
    return rows


def encoder_rows(folder: Path, threads: int, repeats: int, batches: list[int]) -> list[dict]:
    from qa_peers import make_checkpoint

    from edgeinfer.export.bert import export_bert_qa_bundle

    bundle = folder / "bert-base-qa"
    export_bert_qa_bundle(make_checkpoint(12, 768, 12, 512), bundle)
    graphs = variants(bundle / "model.onnx", folder, int4_levels=(3, 4))  # bf16 and int8 compute
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        ids = rng.integers(1000, 21128, (batch, 384)).astype(np.int64)
        ids[:, 0], ids[:, 20], ids[:, -1] = 101, 102, 102
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "token_type_ids": (np.arange(384) > 20).astype(np.int64)[None].repeat(batch, 0)}
        reference = None
        for name, path in graphs.items():
            sess = session(path, threads)
            start, end = sess.run(["start_logits", "end_logits"], feeds)
            best = np.stack([start[:, 21:-1].argmax(1), end[:, 21:-1].argmax(1)], 1)
            reference = best if reference is None else reference
            ms = median_ms(lambda sess=sess, feeds=feeds: sess.run(None, feeds), repeats)
            rows.append({"batch": batch, "graph": name, "ms": round(ms, 1), "windows_per_s": round(batch / ms * 1e3, 2),
                         "same_start_end_as_fp32": f"{int((best == reference).all(1).sum())}/{batch}"})
    return rows


def markdown(record: dict) -> str:
    title = (f"# CPU kernels on this machine ({record['date']}, {record['threads']} threads, onnxruntime "
             f"{record['onnxruntime']})")
    lines = [title, "",
             "CPU flags: " + ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in record["flags"].items()),
             "AMX tile data permitted: " + ", ".join(f"{k}: {v}" for k, v in record["amx_permitted"].items()), "", "| shape | kernel | ms | GOPS | max error / max |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['shape']} | {r['kernel']} | {r['ms']} | {r['gops']} | {r['rel_err']:.1e} |" for r in record["gemm"]]
    lines += ["", "| batch | QA encoder graph | ms | windows/s | same best span as fp32 |", "|---:|---|---:|---:|---|"]
    lines += [f"| {r['batch']} | {r['graph']} | {r['ms']} | {r['windows_per_s']} | {r['same_start_end_as_fp32']} |"
              for r in record["encoder"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--name", default="cpu_features", help="results/NAME.json and .md")
    parser.add_argument("--skip-encoder", action="store_true", help="GEMMs only (no BERT-base export)")
    args = parser.parse_args()
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": args.threads,
              "onnxruntime": ort.__version__, "flags": cpu_flags()}
    with tempfile.TemporaryDirectory() as tmp:
        record["amx_permitted"] = amx_stages(Path(tmp))
        record["gemm"] = gemm_rows(Path(tmp), args.threads, args.repeats)
        record["encoder"] = [] if args.skip_encoder else encoder_rows(Path(tmp), args.threads, args.repeats, args.batches)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1))
    (RESULTS / f"{args.name}.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
