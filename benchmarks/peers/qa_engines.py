"""Extractive QA, text in and answer offsets out, in one engine chosen by the spec's `engine`:

- `edgeinfer`: `Reader.answer` on a bundle exported from the checkpoint (`quantize` none or int8), asked for batches
  of B windows like the others; it still caps each session call at its bundle's token budget (2048 tokens: 5
  windows of 384), as any caller of the reader gets; no torch imported;
- `hf-pipeline`: transformers `pipeline("question-answering")` on the checkpoint in PyTorch;
- `optimum`: the same pipeline over optimum-onnx's `ORTModelForQuestionAnswering` export.

The last two run in build/bench/venv-peers (transformers 5 removed the QA pipeline; optimum-onnx pins < 4.58).
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import Answer, measure_answers, read_spec


def prepare(spec: dict) -> None:
    """Export the edgeinfer bundle or the Optimum model once; the HF pipeline reads the checkpoint itself."""
    if spec["artifact"] is None:
        return
    out = Path(spec["artifact"])
    if spec["engine"] == "edgeinfer" and not (out / "manifest.json").exists():
        from edgeinfer.export.bert import export_bert_qa_bundle

        manifest = export_bert_qa_bundle(spec["checkpoint"], out, quantize=spec.get("quantize", "none"),
                                         tolerance=spec.get("tolerance"))
        print(f"  exported {out.name}: parity {manifest['parity']['max_abs_diff']:.2e}", flush=True)
    elif spec["engine"] == "optimum" and not (out / "config.json").exists():
        from optimum.onnxruntime import ORTModelForQuestionAnswering

        ORTModelForQuestionAnswering.from_pretrained(spec["checkpoint"], export=True).save_pretrained(out)
        print(f"  exported {out.name} with optimum", flush=True)


def load_edgeinfer(spec: dict) -> Answer:
    import edgeinfer

    reader = edgeinfer.load(spec["artifact"], device="cpu", threads=spec["threads"])
    if "torch" in sys.modules:
        raise RuntimeError("the edgeinfer timing process imported torch")

    def answer(questions: list[str], contexts: list[str]) -> list[tuple[int, int]]:
        found = reader.answer(questions, context=contexts, batch_size=len(questions),
                              max_answer_len=spec["max_answer_len"], threshold=0.0)
        return [(a[0].start, a[0].end) if a else (-1, -1) for a in found]

    return answer


def load_pipeline(spec: dict) -> Answer:
    import torch
    from transformers import AutoTokenizer, pipeline

    torch.set_num_threads(spec["threads"])
    if spec["engine"] == "optimum":
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForQuestionAnswering

        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        model = ORTModelForQuestionAnswering.from_pretrained(spec["artifact"], session_options=options)
    else:
        from transformers import AutoModelForQuestionAnswering

        model = AutoModelForQuestionAnswering.from_pretrained(spec["checkpoint"]).eval()
    qa = pipeline("question-answering", model=model, tokenizer=AutoTokenizer.from_pretrained(spec["checkpoint"]))

    def answer(questions: list[str], contexts: list[str]) -> list[tuple[int, int]]:
        with torch.inference_mode():
            found = qa(question=questions, context=contexts, batch_size=len(questions), max_seq_len=spec["window"],
                       doc_stride=spec["stride"], max_answer_len=spec["max_answer_len"], handle_impossible_answer=False)
        found = found if isinstance(found, list) else [found]
        return [(a["start"], a["end"]) for a in found]

    return answer


PACKAGES = {"edgeinfer": ("edgeinfer", "onnxruntime"), "hf-pipeline": ("transformers", "torch"),
            "optimum": ("optimum-onnx", "onnxruntime", "transformers", "torch")}

if __name__ == "__main__":
    mode, spec = read_spec()
    if mode == "prepare":
        prepare(spec)
    else:
        loader = load_edgeinfer if spec["engine"] == "edgeinfer" else load_pipeline
        measure_answers(spec, lambda: loader(spec), PACKAGES[spec["engine"]])
