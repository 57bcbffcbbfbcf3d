"""llama.cpp through llama-cpp-python: the checkpoint converted to GGUF (f32 or q8_0) by llama.cpp's own converter.

Runs under the prebuilt llama-cpp-python of `../shared/serve-bench` (its venv-llamacpp). `prepare` runs that
harness's `gguf_convert.py` (llama.cpp's `convert_hf_to_gguf.py` from the same sdist, the checkpoint's byte-level BPE
declared "gpt-2") under its venv-prep, which has torch. Rows decode together, one sequence each in one context.
A spec with `"extra_bufts": false` loads the weights without llama.cpp's extra buffer types: on an AMX CPU a q8_0
model is repacked into the AMX buffer and its first multi-token batch dies with a segmentation fault
(../shared/serve-bench/README.md; llama-cpp-python 0.3.36).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from common import Generate, engine_main


def prepare(spec: dict) -> None:
    """Convert once to `artifact`/model.gguf with the spec's outtype."""
    out = Path(spec["artifact"]) / "model.gguf"
    if out.exists():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([spec["convert_python"], spec["convert_script"], spec["llama_cpp_src"], spec["checkpoint"],
                    str(out), spec["outtype"]], check=True, capture_output=True)
    print(f"  converted {out.parent.name}", flush=True)


def load(spec: dict) -> Generate:
    """The model and one context of max(batches) sequences, through llama.cpp's own C API: llama-cpp-python's `Llama`
    holds a single sequence, and llama.cpp batches sequences only through `llama_decode` on a multi-sequence batch."""
    import llama_cpp as lc
    import numpy as np

    lc.llama_backend_init()
    model_params = lc.llama_model_default_params()
    model_params.use_extra_bufts = spec.get("extra_bufts", True)
    model = lc.llama_model_load_from_file(str(Path(spec["artifact"]) / "model.gguf").encode(), model_params)
    rows_max = max(spec["batches"])
    params = lc.llama_context_default_params()
    params.n_seq_max = rows_max
    params.n_ctx = rows_max * (len(spec["prompts"][0]) + spec["new_tokens"] + 16)  # split evenly between sequences
    params.n_batch = params.n_ubatch = max(512, len(spec["prompts"][0]))  # a whole prompt per call
    params.n_threads = params.n_threads_batch = spec["threads"]
    params.type_k = params.type_v = lc.GGML_TYPE_F32  # a float32 cache like every other engine's (default: f16)
    context = lc.llama_init_from_model(model, params)
    vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(params.n_batch, 0, rows_max)

    def decode(tokens: list[tuple[int, int, int]]) -> list[int]:
        """Evaluate (token, position, sequence) entries in one call; the greedy next token of each entry's sequence."""
        batch.n_tokens = len(tokens)
        for i, (token, position, sequence) in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, True
            batch.seq_id[i][0] = sequence
        if lc.llama_decode(context, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return [int(np.argmax(np.ctypeslib.as_array(lc.llama_get_logits_ith(context, i), shape=(vocab,))))
                for i in range(len(tokens))]

    def generate(rows: list[list[int]], n: int) -> tuple[list[list[int]], list[float], float]:
        lc.llama_memory_clear(lc.llama_get_memory(context), True)
        t0 = time.perf_counter()
        ids = [[decode([(t, p, r) for p, t in enumerate(row)])[-1]] for r, row in enumerate(rows)]  # prefill
        arrivals = [time.perf_counter() - t0]
        for step in range(1, n):
            tokens = decode([(out[-1], len(row) + step - 1, r) for r, (row, out) in enumerate(zip(rows, ids))])
            for out, token in zip(ids, tokens):
                out.append(token)
            arrivals.append(time.perf_counter() - t0)
        return ids, arrivals, time.perf_counter() - t0

    return generate


if __name__ == "__main__":
    engine_main(prepare, load, ("llama_cpp_python",))
