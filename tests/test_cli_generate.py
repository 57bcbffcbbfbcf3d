"""`edgeinfer generate`: same tokens as the API, JSON errors for bad options."""

from __future__ import annotations

import json

import edgeinfer
from edgeinfer.cli import main


def _run(capsys, *args):
    code = main(["generate", *map(str, args), "--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_generate_greedy_sampled_and_beam(lively_bundles, capsys):
    bundle = lively_bundles["contrib"]
    model = edgeinfer.load(bundle, device="cpu")
    code, out = _run(capsys, bundle, "--ids", "--prompt", "5 6 7", "--max-new-tokens", 6)
    assert code == 0 and out["token_ids"] == model.generate([[5, 6, 7]], max_new_tokens=6)[0].token_ids
    code, out = _run(capsys, bundle, "--ids", "--prompt", "5 6 7", "--top-k", 5, "--seed", 4)
    expected = model.generate([[5, 6, 7]], max_new_tokens=32, do_sample=True, top_k=5, seed=4)[0].token_ids
    assert out["token_ids"] == expected
    code, out = _run(capsys, bundle, "--ids", "--prompt", "5 6 7", "--beams", 3, "--max-new-tokens", 5)
    assert out["token_ids"] == model.generate([[5, 6, 7]], num_beams=3, max_new_tokens=5)[0].token_ids


def test_generate_bad_options(lively_bundles, capsys):
    code, out = _run(capsys, lively_bundles["standard"], "--ids", "--prompt", "5 6", "--top-p", 1.5)
    assert code == 2 and "top_p must be in (0, 1]" in out["error"]
    code, out = _run(capsys, lively_bundles["standard"], "--prompt", "hello")
    assert code == 2 and "no tokenizer" in out["error"]
