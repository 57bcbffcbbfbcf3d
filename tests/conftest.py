"""Shared fixtures: tiny random Hugging Face GPT-2s (built here, nothing downloaded) and their bundles."""

from __future__ import annotations

import string

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import edgeinfer.export  # noqa: F401  (first: it keeps the checkout's kernels/ from shadowing transformers' kernels)

torch = pytest.importorskip("torch")

CHINESE = "滚滚长江东逝水，浪花淘尽英雄。是非成败转头空。"
WORDS = ["the", "poem", "was", "written", "by", "li", "bai", "who", "wrote", "it", "in", "year", "moon", "light", "before",
         "bed", ",", ".", "?", "床", "前", "明", "月", "光", "谁", "写"]


def tiny_gpt2(seed: int = 0, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = {"vocab_size": 97, "n_positions": 64, "n_embd": 48, "n_layer": 2, "n_head": 3}
    config.update(overrides)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**config)).eval()


@pytest.fixture(scope="session")
def hf_gpt2():
    return tiny_gpt2()


@pytest.fixture(scope="session")
def gpt2_bundles(hf_gpt2, tmp_path_factory):
    """{"standard": path, "contrib": path} exported from the same tiny GPT-2."""
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    root = tmp_path_factory.mktemp("bundles")
    return {target: _export(export_hf_checkpoint, hf_gpt2, root / target, target) for target in ("standard", "contrib")}


def _export(fn, model, path, target):
    fn(model, path, attention=target)
    return path


@pytest.fixture(scope="session")
def lively_gpt2():
    """A tiny GPT-2 with large weights, so greedy and sampled continuations vary instead of repeating."""
    return tiny_gpt2(seed=7, initializer_range=0.3)


@pytest.fixture(scope="session")
def lively_bundles(lively_gpt2, tmp_path_factory):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    root = tmp_path_factory.mktemp("lively")
    return {t: _export(export_hf_checkpoint, lively_gpt2, root / t, t) for t in ("standard", "contrib")}


@pytest.fixture(scope="session")
def query_key_bundle(tmp_path_factory):
    """A lively causal GPT (the Xiangqi bundle's character tokenizer and its vocabulary) whose graph takes the whole query-key
    mask, as tree scoring needs, on a concat cache: decoding must not depend on the mask's form. (The shipped Xiangqi
    bundle is a prefix LM over 91-token boards, whose free-form prompts are refused.)"""
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle
    from edgeinfer.loader import default_bundle

    tokenizer = default_bundle("xiangqi-chars") / "tokenizer.json"
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=Tokenizer.from_file(str(tokenizer)).get_vocab_size(), n_positions=64, n_embd=32,
                          n_layer=2, n_head=2))
    for p in model.parameters():  # lively: continuations vary instead of repeating
        p.data.mul_(6)
    folder = tmp_path_factory.mktemp("query-key") / "bundle"
    export_gpt_bundle(model, folder, attention="standard", attention_mask="query_key",
                      tokenizer_file=tokenizer, special_tokens={"pad": 0})
    return folder


def byte_level_tokenizer(vocab_size: int = 300) -> Tokenizer:
    """A GPT-2-style byte-level BPE with few merges, so most Chinese characters span several tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CHINESE, "hello world, the quick brown fox jumps"], trainer)
    return tok


def perturb_vectors(model, scale: float = 0.1) -> None:
    """Add noise to every bias and norm weight: transformers initialises them to 0 and 1, so a mismapped or dropped one
    would go unseen by a parity check."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * scale)


def wordpiece_tokenizer() -> Tokenizer:
    """A BERT-style WordPiece tokenizer over WORDS, letters and digits ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4)."""
    from tokenizers import normalizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = [*specials, *WORDS, *string.ascii_lowercase, *string.digits]
    tokens += [f"##{c}" for c in string.ascii_lowercase + string.digits]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.add_special_tokens(specials)  # "[MASK]" in a text is one token, as in a checkpoint's tokenizer.json
    return tok


# ChatML with the checkpoint's bos token in front; other roles are refused in the template's own words
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def templated_checkpoint(folder):
    """A tiny GPT-2 checkpoint folder whose tokenizer_config.json carries a chat template (as instruct models ship)."""
    import json

    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tiny_gpt2(seed=7, initializer_range=0.3, vocab_size=tokenizer.get_vocab_size(),
              bos_token_id=tokenizer.token_to_id("<|endoftext|>"),
              eos_token_id=tokenizer.token_to_id("<|im_end|>")).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
        "chat_template": CHAT_TEMPLATE}))
    return folder
