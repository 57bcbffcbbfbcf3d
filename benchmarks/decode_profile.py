"""Where a decode step's time goes, against what this machine's memory allows.

    python benchmarks/decode_profile.py [--bundle DIR] [--batch 1 --prompt 128 --steps 64 --threads 2 --repeats 3]

Three measurements, interleaved `--repeats` times so they share the machine's noise:
- the engine's own decode steps (`decode_step.step_times`: the step `generate` runs), wall time per step;
- the same steps under onnxruntime's profiler: time per operator type, and the Python + binding time around
  each onnxruntime call (wall step minus onnxruntime's `model_run`);
- a graph of nothing but the bundle's weight MatMuls at one row (random weights of the same shapes), which
  streams the same weight bytes with no other work: the best a bandwidth-bound step can do on this machine
  (fp32 bundles; a quantized bundle's weight bytes are compared with the copy bandwidth only).
BUNDLE defaults to the GPT-2-small bundle that `benchmarks/decode_peers.py` prepares (run that once first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from decode_step import step_times
from driver import BENCH, copy_bandwidth
from onnx import TensorProto, helper, numpy_helper

import edgeinfer
from edgeinfer.session import CPU_DISABLED_FUSIONS

DEFAULT_BUNDLE = BENCH / "peers" / "hf-gpt2-small" / "edgeinfer-contrib"


def cpu_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return options


def profiled_steps(bundle: Path, args, work: Path) -> tuple[dict[str, float], float, float]:
    """Per decode step under the profiler: microseconds per operator type, and the medians of onnxruntime's whole
    call and of the engine's wall step around it, in microseconds (the prefill left out)."""
    model = edgeinfer.load(bundle, device="cpu", threads=args.threads)
    options = cpu_options(args.threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "ort")
    model.session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"],
                                         disabled_optimizers=CPU_DISABLED_FUSIONS)
    walls = step_times(model, args.batch, args.prompt, args.steps)
    events = json.loads(Path(model.session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    prefill_end = runs[0][1]
    per_op = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > prefill_end:
            per_op[e["args"]["op_name"]] += e["dur"] / args.steps
    return dict(per_op), statistics.median(end - start for start, end in runs[1:]), 1e6 * statistics.median(walls)


def streamed_weight_bytes(bundle: Path) -> int:
    """Bytes of the initializers a decode step reads whole: every one but the tables that only a Gather reads."""
    graph = onnx.load(bundle / "model.onnx", load_external_data=False).graph
    readers = defaultdict(set)
    for node in graph.node:
        for name in node.input:
            readers[name].add(node.op_type)
    return sum(int(np.prod(i.dims)) * helper.tensor_dtype_to_np_dtype(i.data_type).itemsize
               for i in graph.initializer if readers[i.name] - {"Gather"})


def matmul_only_graph(bundle: Path, path: Path) -> int | None:
    """Write a graph of the bundle's fp32 weight MatMuls, each fed one row; returns the weight bytes it streams
    (None, and no graph, when the bundle has none: a quantized bundle)."""
    graph = onnx.load(bundle / "model.onnx", load_external_data=False).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    for node in graph.node:  # a tied LM head multiplies by Transpose(embedding)
        if node.op_type == "Transpose" and node.input[0] in shapes:
            shapes[node.output[0]] = shapes[node.input[0]][::-1]
    weights = [shapes[n.input[1]] for n in graph.node if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2]
    if not weights:
        return None
    rng = np.random.default_rng(0)
    rows = sorted({k for k, _ in weights})
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k]) for k in rows]
    nodes, initializers, outputs = [], [], []
    for i, (k, n) in enumerate(weights):
        initializers.append(numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{k}", f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    model = helper.make_model(helper.make_graph(nodes, "matmuls", inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data")
    return sum(4 * k * n for k, n in weights)


def matmul_only_times(path: Path, threads: int, calls: int) -> list[float]:
    session = ort.InferenceSession(str(path), cpu_options(threads), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones(i.shape, np.float32) for i in session.get_inputs()}
    session.run(None, feeds)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").exists():
        raise SystemExit(f"no bundle at {args.bundle}: run benchmarks/decode_peers.py once, or pass --bundle")
    model = edgeinfer.load(args.bundle, device="cpu", threads=args.threads)
    walls, matmuls, runs, profiled_walls, per_op = [], [], [], [], defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weight_bytes = matmul_only_graph(args.bundle, work / "matmuls.onnx")
        for repeat in range(args.repeats):
            walls += step_times(model, args.batch, args.prompt, args.steps)
            if weight_bytes is not None:
                matmuls += matmul_only_times(work / "matmuls.onnx", args.threads, args.steps)
            ops, run, profiled_wall = profiled_steps(args.bundle, args, work)
            runs.append(run)
            profiled_walls.append(profiled_wall)
            for op, us in ops.items():
                per_op[op].append(us)
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    bandwidth = copy_bandwidth()
    wall = 1e3 * statistics.median(walls)
    ops = {op: statistics.median(us) / 1e3 for op, us in per_op.items()}
    run = statistics.median(runs) / 1e3
    outside = statistics.median(w - r for w, r in zip(profiled_walls, runs)) / 1e3
    print(f"\nbatch {args.batch}, prompt {args.prompt}, {args.steps} steps, {args.threads} threads, "
          f"median of {args.repeats} interleaved repeats")
    print(f"decode step (engine, wall):           {wall:7.2f} ms")
    print(f"under the profiler: onnxruntime call {run:7.2f} ms, Python and binding around it {outside:5.2f} ms")
    for op, ms in sorted(ops.items(), key=lambda kv: -kv[1])[:6]:
        print(f"    {op:32s} {ms:7.2f} ms  {100 * ms / sum(ops.values()):5.1f}%")
    if weight_bytes is None:
        weight_bytes = streamed_weight_bytes(args.bundle)
    else:
        matmul_only = 1e3 * statistics.median(matmuls)
        print(f"MatMul-only graph, same weights:      {matmul_only:7.2f} ms  "
              f"({weight_bytes / matmul_only / 1e6:.1f} GB/s)")
    print(f"copy-bandwidth floor of those weights: {1e3 * weight_bytes / bandwidth:6.2f} ms  "
          f"({weight_bytes / 1e6:.2f} MB at {bandwidth / 1e9:.1f} GB/s, read + write)")


if __name__ == "__main__":
    main()
