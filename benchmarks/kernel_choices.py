"""Why CPU sessions switch off onnxruntime's SkipLayerNorm fusion: the fused kernel against the nodes it replaces.

    python benchmarks/kernel_choices.py [--hidden 768] [--rows 1 16 128 1536] [--repeats 200]

Times com.microsoft.SkipLayerNormalization(x, skip, gamma, beta, bias) against Add(x, bias) + Add(skip) +
LayerNormalization on (rows, hidden) inputs, each in its own 2-thread session, interleaved, medians (the session
call's own overhead is in both). Rows 1 and 16 are decode steps at batch 1 and 16, 128 a prefill, 1536 a BERT
batch of 4 x 384. Writes results/kernel_choices.json.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from driver import RESULTS
from onnx import TensorProto, helper, numpy_helper


def session(nodes: list, hidden: int, disabled: list[str]) -> ort.InferenceSession:
    rng = np.random.default_rng(0)
    params = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), n) for n in ("gamma", "beta", "bias")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["rows", hidden]) for n in ("x", "skip")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, disabled_optimizers=disabled)


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
    rng = np.random.default_rng(1)
    table = []
    for rows in args.rows:
        feeds = {n: rng.standard_normal((rows, args.hidden)).astype(np.float32) for n in ("x", "skip")}
        np.testing.assert_allclose(fused.run(None, feeds)[0], plain.run(None, feeds)[0], atol=1e-4)
        times: dict[str, list[float]] = {"add_add_layernorm": [], "skip_layernorm": []}
        for _ in range(max(5, args.repeats * 16 // max(rows, 16))):
            for name, s in (("add_add_layernorm", plain), ("skip_layernorm", fused)):
                started = time.perf_counter()
                s.run(None, feeds)
                times[name].append(time.perf_counter() - started)
        row = {"rows": rows, **{k: round(float(np.median(v)) * 1e6, 1) for k, v in times.items()}}
        row["fused_slowdown"] = round(row["skip_layernorm"] / row["add_add_layernorm"], 2)
        table.append(row)
        print(f"rows {rows:5d}: Add+Add+LayerNorm {row['add_add_layernorm']:8.1f} us, SkipLayerNormalization "
              f"{row['skip_layernorm']:8.1f} us ({row['fused_slowdown']}x)", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kernel_choices.json").write_text(json.dumps({"onnxruntime": ort.__version__, "hidden": args.hidden,
                                                             "threads": 2, "table": table}, indent=1))


if __name__ == "__main__":
    main()
