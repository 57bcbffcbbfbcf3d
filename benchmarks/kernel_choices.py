"""Fused normalization kernels against the nodes they replace, to choose what the exports emit on CPU.

    python benchmarks/kernel_choices.py [--hidden 768] [--rows 1 16 128 1536] [--repeats 200]

1. com.microsoft.SkipLayerNormalization(x, skip, gamma, beta, bias) against Add(x, bias) + Add(skip) +
   LayerNormalization, one of each per session: why CPU sessions switch off onnxruntime's SkipLayerNorm fusion.
2. The Llama family's residual Add + RMSNorm, as 24 in a chain (a 12-layer decoder's worth, so the session call's own
   overhead does not hide the kernels): Add + opset-23 RMSNormalization (what the Llama export writes) against
   Add + SimplifiedLayerNormalization and com.microsoft.SkipSimplifiedLayerNormalization (what onnxruntime-genai's
   builder writes).
Each variant in its own 2-thread session, interleaved, medians. Rows 1 and 16 are decode steps at batch 1 and 16, 128
a prefill, 1536 a BERT batch of 4 x 384. Writes results/kernel_choices.json.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from driver import RESULTS
from onnx import TensorProto, helper, numpy_helper


def session(nodes: list, hidden: int, disabled: list[str], output: str = "y", opset: int = 17) -> ort.InferenceSession:
    rng = np.random.default_rng(0)
    params = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), n) for n in ("gamma", "beta", "bias")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["rows", hidden]) for n in ("x", "skip")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3  # not the unused-initializer warnings of the RMS graphs
    return ort.InferenceSession(model.SerializeToString(), options, disabled_optimizers=disabled)


RMS_CHAIN = 24
RMS_FORMS = ("add_rmsnormalization", "add_simplified_layernorm", "skip_simplified_layernorm")


def rms_chain(form: str, hidden: int) -> ort.InferenceSession:
    """RMS_CHAIN residual Add + RMSNorm pairs in `form`, each reading the previous one's output."""
    nodes, x = [], "x"
    for i in range(RMS_CHAIN):
        if form == "skip_simplified_layernorm":
            nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", [x, "skip", "gamma"], [f"y{i}", "", "", f"s{i}"],
                                          domain="com.microsoft", epsilon=1e-5))
        else:
            op = "RMSNormalization" if form == "add_rmsnormalization" else "SimplifiedLayerNormalization"
            nodes += [helper.make_node("Add", [x, "skip"], [f"s{i}"]),
                      helper.make_node(op, [f"s{i}", "gamma"], [f"y{i}"], axis=-1, epsilon=1e-5)]
        x = f"y{i}"
    return session(nodes, hidden, disabled=["SkipLayerNormFusion"], output=x, opset=23)


def timed(sessions: dict[str, ort.InferenceSession], feeds: dict, calls: int) -> dict[str, float]:
    """Median microseconds per call of each session, the sessions interleaved."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(calls):
        for name, s in sessions.items():
            started = time.perf_counter()
            s.run(None, feeds)
            times[name].append(time.perf_counter() - started)
    return {name: round(float(np.median(v)) * 1e6, 1) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 128, 1536])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    plain = session([helper.make_node("Add", ["x", "bias"], ["biased"]), helper.make_node("Add", ["biased", "skip"], ["sum"]),
                     helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)],
                    args.hidden, disabled=["SkipLayerNormFusion"])
    fused = session([helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"],
                                      domain="com.microsoft", epsilon=1e-5)], args.hidden, disabled=[])
    rms = {form: rms_chain(form, args.hidden) for form in RMS_FORMS}
    rng = np.random.default_rng(1)
    table, rms_table = [], []
    for rows in args.rows:
        feeds = {n: rng.standard_normal((rows, args.hidden)).astype(np.float32) for n in ("x", "skip")}
        calls = max(5, args.repeats * 16 // max(rows, 16))
        np.testing.assert_allclose(fused.run(None, feeds)[0], plain.run(None, feeds)[0], atol=1e-4)
        row = {"rows": rows, **timed({"add_add_layernorm": plain, "skip_layernorm": fused}, feeds, calls)}
        row["fused_slowdown"] = round(row["skip_layernorm"] / row["add_add_layernorm"], 2)
        table.append(row)
        print(f"rows {rows:5d}: Add+Add+LayerNorm {row['add_add_layernorm']:8.1f} us, SkipLayerNormalization "
              f"{row['skip_layernorm']:8.1f} us ({row['fused_slowdown']}x)", flush=True)
        reference = rms["add_rmsnormalization"].run(None, feeds)[0]
        for s in rms.values():
            np.testing.assert_allclose(s.run(None, feeds)[0], reference, rtol=1e-3, atol=1e-3)
        rms_table.append({"rows": rows, **timed(rms, feeds, calls)})
        print(f"rows {rows:5d}: {RMS_CHAIN} x Add + RMSNorm, us: " +
              ", ".join(f"{form} {rms_table[-1][form]:.1f}" for form in RMS_FORMS), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kernel_choices.json").write_text(json.dumps({"onnxruntime": ort.__version__, "hidden": args.hidden,
                                                             "threads": 2, "table": table, "rms_chain": RMS_CHAIN,
                                                             "rms_table": rms_table}, indent=1))


if __name__ == "__main__":
    main()
