"""Greedy decoding of a Llama-shaped decoder: edgeinfer against onnxruntime-genai, CTranslate2 and llama.cpp, each
through its own converter, same weights, one run.

    python benchmarks/llama_peers.py [--engines ...] [--repeats 1] [--omp-wait PASSIVE]

The checkpoint (build/bench/hf-llama-12x768/) is a random-weight LlamaForCausalLM of GPT-2-small size: 12 layers,
hidden 768, 12 heads over 4 key/value heads, SwiGLU intermediate 2048, vocabulary 32000, untied head
(torch.manual_seed(0)), with a small byte-level BPE tokenizer that llama.cpp's converter needs (ids are fed
directly, so its tokens never matter). Each engine converts it its own way: edgeinfer's export (fp32 with
GroupQueryAttention, and int8 weights), genai's model builder (fp32, CPU), CTranslate2's Transformers converter
(float32, int8), llama.cpp's convert_hf_to_gguf (f32, q8_0). The run follows decode_peers.py: a correctness gate
against edgeinfer-contrib's greedy ids, then interleaved timed repeats, one fresh process per engine run. Writes
benchmarks/results/llama_peers.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from decode_peers import peer_arguments, run_peers
from driver import BENCH, ROOT, Engine, write_results

SHAPE = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
         "num_attention_heads": 12, "num_key_value_heads": 4, "max_position_embeddings": 2048,
         "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
SERVE_BENCH = ROOT.parent / "shared" / "serve-bench"
SERVE_CACHE = Path("/root/.cache/serve-bench")
LLAMA_CPP = {"python": SERVE_CACHE / "venv-llamacpp" / "bin" / "python",
             "convert_python": str(SERVE_CACHE / "venv-prep" / "bin" / "python"),
             "convert_script": str(SERVE_BENCH / "gguf_convert.py"),
             "llama_cpp_src": str(SERVE_CACHE / "src" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp")}


def llama_cpp(artifact: str, outtype: str, **options) -> Engine:
    paths = {key: value for key, value in LLAMA_CPP.items() if key != "python"}
    return Engine("engine_llamacpp.py", False, artifact, {**paths, "outtype": outtype, **options},
                  python=LLAMA_CPP["python"])


ENGINES = {
    "edgeinfer-contrib": Engine("engine_edgeinfer.py", False, "edgeinfer-contrib", {"attention": "auto"}),
    "edgeinfer-int8": Engine("engine_edgeinfer.py", False, "edgeinfer-int8",
                             # random weights give small logits next to int8 error: the gate judges tokens
                             {"attention": "auto", "quantize": "int8", "tolerance": 0.5}),
    "genai": Engine("engine_genai.py", True, "genai-builder-fp32", {"builder_python": sys.executable}),
    "ct2-fp32": Engine("engine_ctranslate2.py", True, "ct2-float32", {"quantization": "float32"}),
    "ct2-int8": Engine("engine_ctranslate2.py", True, "ct2-int8", {"quantization": "int8"}),
    "llamacpp-f32": llama_cpp("gguf-f32", "f32"),
    "llamacpp-q8_0": llama_cpp("gguf-q8_0", "q8_0", extra_bufts=False),  # no AMX repack: it segfaults here
}


def make_checkpoint() -> Path:
    """The random-weight LlamaForCausalLM and a byte-level BPE tokenizer, saved once."""
    folder = BENCH / "hf-llama-12x768"
    if (folder / "config.json").exists():
        return folder
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    print(f"creating checkpoint {folder.relative_to(ROOT)}", flush=True)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SHAPE)).eval().save_pretrained(folder)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([Path(__file__).read_text()], vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"])
    PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)
    config = folder / "tokenizer_config.json"  # transformers 5 names its own backend; the converter's 4.57 reads this
    config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    peer_arguments(parser, ENGINES, repeats=1)
    args = parser.parse_args(argv)
    args.vocab = SHAPE["vocab_size"]  # the prompts' id range
    report, table, note = run_peers(args, make_checkpoint(), ENGINES, SHAPE)
    write_results(ROOT / "benchmarks" / "results", "llama_peers", report, table, note)
    return report


if __name__ == "__main__":
    main()
