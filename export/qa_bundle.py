"""Export the trained DGCNN reader to an extractive-QA bundle (model.onnx, vocab.json, manifest.json).

``python -m edgeinfer.export.qa_bundle --from build/dgcnn --out runtime/bundles/qa-dgcnn`` reads what
``train_dgcnn`` wrote (model.pt, vocab.json, training.json), dynamo-exports the reader with dynamic batch
and lengths, measures parity against the PyTorch model on padded batches of another shape, and refuses
to write a bundle over the tolerance. The window defaults match the training data (passages of at most
MAX_PASSAGE characters) and the threshold is the one calibrated on dev: below it the reader answers nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from edgeinfer import __version__
from edgeinfer.bundle import Manifest

from .dgcnn import PAD, DGCNNConfig, DGCNNReader
from .onnx_export import (
    OPSET,
    ParityError,
    cpu_session,
    io_spec,
    op_census,
    warm_up_reference,
)
from .qa_questions import MAX_ANSWER, MAX_QUESTION
from .qa_reading import MAX_PASSAGE

INPUTS = {"q_chars": ["batch", "q_len"], "q_words": ["batch", "q_len"], "p_chars": ["batch", "p_len"], "p_words": ["batch", "p_len"]}
OUTPUTS = {"start_probs": ["batch", "p_len"], "end_probs": ["batch", "p_len"]}
STRIDE = 64  # characters shared by neighbouring windows: answers up to 65 characters lie whole in one


def load_reader(folder: Path) -> DGCNNReader:
    """The reader train_dgcnn saved into `folder` (model.pt: state dict and config)."""
    saved = torch.load(Path(folder) / "model.pt", map_location="cpu", weights_only=True)
    model = DGCNNReader(DGCNNConfig(**saved["config"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def reader_from_bundle(folder: str | Path, tolerance: float = 1e-4) -> tuple[DGCNNReader, dict]:
    """The PyTorch reader and vocab.json of a DGCNN bundle: a warm start for training on new data.

    Named initializers load by name; the exporter stores Linear weights transposed under generated
    names, which are matched by shape in graph order (the question's pool before the passage's). The
    result must reproduce the bundle's outputs, else ParityError.
    """
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    keys = set(DGCNNConfig.__dataclass_fields__)
    model = DGCNNReader(DGCNNConfig(**{k: v for k, v in manifest["model"].items() if k in keys}))
    proto = onnx.load(str(folder / manifest["files"]["model"]))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    consumed = [x for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") for x in n.input if x in weights]
    state = model.state_dict()
    for name, value in state.items():
        if name in weights:
            state[name] = torch.from_numpy(weights[name].copy())
            continue
        match = next((x for x in consumed if weights[x].shape == tuple(value.T.shape)), None)
        if match is None:
            raise ParityError(f"bundle {folder} has no weight for {name}")
        consumed = [x for x in consumed if x != match]
        state[name] = torch.from_numpy(weights[match].T.copy())
    model.load_state_dict(state)
    model.eval()
    diff = measure_parity(folder / manifest["files"]["model"], model)
    if not diff <= tolerance:
        raise ParityError(f"reader rebuilt from {folder} differs from its graph by {diff:.3g}")
    return model, json.loads((folder / manifest["files"]["vocab"]).read_text(encoding="utf-8"))


def example_batch(config: DGCNNConfig, batch: int, q_len: int, p_len: int, seed: int) -> dict[str, torch.Tensor]:
    """Random ids with ragged rows (right padding), the shapes bucketed batches have."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for side, length in (("q", q_len), ("p", p_len)):
        keep = torch.arange(length)[None, :] < torch.randint(1, length + 1, (batch, 1), generator=g)
        keep[0] = True
        for kind, vocab in (("chars", config.char_vocab), ("words", config.word_vocab)):
            ids = torch.randint(PAD + 1, vocab, (batch, length), generator=g)
            out[f"{side}_{kind}"] = torch.where(keep, ids, PAD)
    return out


def _name_dims(proto: onnx.ModelProto) -> None:
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, {**INPUTS, **OUTPUTS}[value.name], strict=True):
            dim.dim_param = name


def export_onnx(model: DGCNNReader, path: Path) -> onnx.ModelProto:
    example = example_batch(model.config, batch=2, q_len=5, p_len=9, seed=0)
    auto = torch.export.Dim.AUTO
    program = torch.onnx.export(
        model, (), str(path), kwargs=example, dynamo=True, opset_version=OPSET, external_data=False,
        dynamic_shapes={name: {0: auto, 1: auto} for name in INPUTS},
        input_names=list(INPUTS), output_names=list(OUTPUTS), optimize=True, verbose=False,
    )
    proto = program.model_proto
    _name_dims(proto)
    onnx.save(proto, str(path))
    return proto


@torch.no_grad()
def measure_parity(path: Path, model: DGCNNReader) -> float:
    """Max |probability difference| of onnxruntime against the PyTorch reader over two padded batches."""
    session = cpu_session(path)
    worst = 0.0
    batches = [example_batch(model.config, *shape, seed=seed) for seed, shape in ((1, (3, 11, 57)), (2, (5, 30, 200)))]
    warm_up_reference(model, **batches[0])
    for batch in batches:
        got = session.run(list(OUTPUTS), {k: v.numpy() for k, v in batch.items()})
        want = model(**batch)
        worst = max(worst, *(float(np.max(np.abs(g - w.numpy()))) for g, w in zip(got, want, strict=True)))
    return worst


def export_qa_bundle(source: str | Path, out_dir: str | Path, tolerance: float = 1e-4) -> dict:
    """Write the bundle for the reader trained into `source`; returns the manifest."""
    source, out_dir = Path(source), Path(out_dir)
    model = load_reader(source)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        proto = export_onnx(model, onnx_path)
        export_seconds = time.perf_counter() - started
        diff = measure_parity(onnx_path, model)
        if not diff <= tolerance:
            raise ParityError(f"exported DGCNN differs from PyTorch by {diff:.3g}, over the tolerance {tolerance:g}; no bundle written")
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(onnx_path), out_dir / "model.onnx")
    shutil.copyfile(source / "vocab.json", out_dir / "vocab.json")
    training = json.loads((source / "training.json").read_text())
    metrics = training["metrics"]
    manifest = Manifest.new("extractive-qa", {
        "reader": "dgcnn",
        "files": {"model": "model.onnx", "vocab": "vocab.json"},
        "inputs": [io_spec(v) for v in proto.graph.input],
        "outputs": [io_spec(v) for v in proto.graph.output],
        "special_tokens": {"pad": PAD, "unk": PAD + 1},
        "qa": {
            "unit": "char",
            "window": MAX_PASSAGE,
            "stride": STRIDE,
            "max_answer_len": MAX_ANSWER,
            "max_question_len": MAX_QUESTION,
            "threshold": training["threshold"],
            "batch_size": 32,
            "span_score": "start_prob * end_prob",
            "vote": "sum(s^2) / (1 + sum(s))",
            "calibration": "threshold on the best span probability maximising dev's F1 (answerable) + "
                           "no-answer accuracy (unanswerable); below it no answer is returned",
        },
        "model": {"architecture": "dgcnn", **model.config.to_dict(), "n_parameters": sum(p.numel() for p in model.parameters())},
        "op_census": op_census(proto),
        "metrics": {split: metrics[split] for split in ("dev", "test", "ood") if split in metrics},
        "training": {"command": training["command"], "device": training["device"], "steps": training["steps"]},
        "parity": {"max_abs_diff": diff, "tolerance": tolerance, "reference": "edgeinfer DGCNNReader (PyTorch eager)"},
        "producer": {"edgeinfer": __version__, "torch": torch.__version__, "onnx_opset": OPSET, "export_seconds": round(export_seconds, 2)},
    })
    manifest.write(out_dir)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, default=Path("build/dgcnn"), help="train_dgcnn output folder")
    parser.add_argument("--out", type=Path, default=Path("runtime/bundles/qa-dgcnn"))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    manifest = export_qa_bundle(args.source, args.out, args.tolerance)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB), parity {manifest['parity']['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
