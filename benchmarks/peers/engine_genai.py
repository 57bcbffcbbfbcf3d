"""onnxruntime-genai: its own C++ generation loop over its model builder's graph (Llama) or Optimum's (GPT-2).

Runs in build/bench/venv-peers. genai's model builder does not take GPT-2, so for GPT-2 the model is Optimum's
graph, in the `optimum` engine's own folder, with a hand-written genai_config.json added: the same weights and
onnxruntime, with genai's loop, KV-cache handling and IO binding around it instead of transformers' `generate`.
A spec with `builder_python` runs genai's own builder instead (`onnxruntime_genai/models/builder.py -p fp32 -e cpu`)
under that interpreter: the builder imports model classes of a newer transformers than the venv's pin allows.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from common import Generate, engine_main
from engine_optimum import prepare as optimum_export


def prepare(spec: dict) -> None:
    """Optimum's export (made here if the optimum engine has not made it), then the genai_config.json that tells
    genai the graph's names and shapes."""
    out = Path(spec["artifact"])
    if (out / "genai_config.json").exists():
        return
    if "builder_python" in spec:
        import onnxruntime_genai

        builder = Path(onnxruntime_genai.__file__).parent / "models" / "builder.py"
        subprocess.run([spec["builder_python"], str(builder), "-m", spec["checkpoint"], "-i", spec["checkpoint"],
                        "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(out / "cache")], check=True)
        print(f"  built {out.name} with genai's model builder", flush=True)
        return
    optimum_export(spec)
    hf = json.loads((out / "config.json").read_text())
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": "model.onnx",
        "head_size": hf["n_embd"] // hf["n_head"],
        "hidden_size": hf["n_embd"],
        "num_attention_heads": hf["n_head"],
        "num_key_value_heads": hf["n_head"],
        "num_hidden_layers": hf["n_layer"],
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
    }
    config = {
        "model": {"type": "llama", "decoder": decoder, "vocab_size": hf["vocab_size"],
                  "context_length": hf["n_positions"], "bos_token_id": hf["bos_token_id"],
                  "eos_token_id": hf["eos_token_id"], "pad_token_id": hf["eos_token_id"]},
        "search": {"do_sample": False, "num_beams": 1, "max_length": hf["n_positions"], "min_length": 0,
                   "past_present_share_buffer": False},  # Optimum's graph concatenates past and new keys
    }
    (out / "genai_config.json").write_text(json.dumps(config, indent=1))
    print(f"  wrote {out.name}/genai_config.json", flush=True)


def load(spec: dict) -> Generate:
    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(spec["artifact"])
    config.clear_providers()  # CPU
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": spec["threads"], "inter_op_num_threads": 1}}}}))
    model = og.Model(config)

    def generate(rows: list[list[int]], n: int) -> tuple[list[list[int]], list[float], float]:
        total = len(rows[0]) + n  # genai's lengths count the prompt; min_length keeps eos from ending a row early
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False, batch_size=len(rows))
        t0 = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens(np.array(rows, dtype=np.int32))
        arrivals = []
        while not generator.is_done():
            generator.generate_next_token()
            arrivals.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - t0
        ids = [generator.get_sequence(b)[len(rows[b]) :].tolist() for b in range(len(rows))]
        return ids, arrivals, elapsed

    return generate


if __name__ == "__main__":
    engine_main(prepare, load, ("onnxruntime-genai", "onnxruntime"))
