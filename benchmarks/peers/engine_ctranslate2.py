"""CTranslate2: the checkpoint converted by its Transformers converter (fp32 or int8 weights), run by its Generator.

Runs in build/bench/venv-peers. The random checkpoint has no tokenizer, so conversion uses a made-up vocabulary
whose token i is the string "t<i>": CTranslate2 works on token strings, and this keeps ids and strings one-to-one.
"""

from __future__ import annotations

import time
from pathlib import Path

from common import Generate, engine_main


def token(i: int) -> str:
    return f"t{i}"


def prepare(spec: dict) -> None:
    """Convert once with the spec's quantization."""
    out = Path(spec["artifact"])
    if (out / "model.bin").exists():
        return
    from ctranslate2.converters import TransformersConverter
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec["checkpoint"])
    vocab = config.vocab_size

    class IdVocabulary:
        """The few tokenizer attributes the GPT-2 and Llama loaders read."""

        bos_token = token(config.bos_token_id)
        eos_token = unk_token = token(config.eos_token_id)

        def get_vocab(self) -> dict[str, int]:
            return {token(i): i for i in range(vocab)}

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return IdVocabulary()

    Converter(spec["checkpoint"]).convert(str(out), quantization=spec["quantization"])
    print(f"  converted {out.name}", flush=True)


def load(spec: dict) -> Generate:
    import ctranslate2

    generator = ctranslate2.Generator(spec["artifact"], device="cpu", compute_type=spec["quantization"],
                                      inter_threads=1, intra_threads=spec["threads"])

    def generate(rows: list[list[int]], n: int) -> tuple[list[list[int]], list[float], float]:
        arrivals: list[float] = []

        def on_token(step) -> bool:
            if step.batch_id == 0:  # called for every row at every step: row 0's marks the step
                arrivals.append(time.perf_counter() - t0)
            return False

        t0 = time.perf_counter()
        results = generator.generate_batch([[token(i) for i in row] for row in rows], max_length=n, min_length=n,
                                           sampling_topk=1, include_prompt_in_result=False, end_token=[],
                                           callback=on_token)
        total = time.perf_counter() - t0
        return [r.sequences_ids[0] for r in results], arrivals, total

    return generate


if __name__ == "__main__":
    engine_main(prepare, load, ("ctranslate2",))
