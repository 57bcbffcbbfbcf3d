"""Known-dangerous sizes, each in a child process limited to 3 GB of address space and 60 s: a clean refusal (or a
bounded result) is the only way out, never a MemoryError, a crash or a hang.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys

import pytest

from edgeinfer.loader import BUNDLES

MEMORY = 3 * 2**30
SECONDS = 60
CHILD = """
import json, shutil, sys, tempfile
from pathlib import Path

import edgeinfer
from edgeinfer.chat import Chat

GPT2, CHAT, QA = Path(sys.argv[1]), Path(sys.argv[2]) / "chat", Path(sys.argv[2]) / "qa"


def edited(bundle, section, field, value):
    folder = Path(tempfile.mkdtemp()) / "bundle"
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.setdefault(section, {})[field] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def lm(folder):
    return edgeinfer.load(folder, device="cpu")


try:
    result = CASE
except edgeinfer.EdgeInferError as exc:
    print(f"refused {type(exc).__name__}: {exc}")
else:
    print(f"done {result}")
"""

# what a child runs (GPT2, CHAT, QA: bundle folders; lm: load), and how its one line of output must begin
CASES = {
    "num_return_sequences": ("lm(GPT2).generate([[1]], num_return_sequences=10**9)",
                             "refused InputError: num_return_sequences must be"),
    "stream_num_return_sequences": ("lm(GPT2).stream([[1]], num_return_sequences=10**9)",
                                    "refused InputError: num_return_sequences must be"),
    "max_new_tokens": ("len(lm(GPT2).generate([[1]], max_new_tokens=10**12, stop_token_ids=[])[0].token_ids)",
                       "done 63"),
    "chat_max_new_tokens": ("Chat(lm(CHAT), max_new_tokens=10**12)",
                            "refused InputError: max_new_tokens 1000000000000 leaves no room"),
    "million_prompts": ("lm(GPT2).generate([[1]] * 10**6)",
                        "refused InputError: 1000000 prompts x 1 samples is over 100000 requests"),
    "ten_million_token_prompt": ("lm(GPT2).generate([[1] * 10**7])",
                                 "refused InputError: prompt of 10000000 tokens leaves no room"),
    "length_penalty": ("lm(GPT2).generate([[1]], num_beams=2, length_penalty=10**9)",
                       "refused InputError: length_penalty must be"),
    "n_layer_1e7": ("lm(edited(GPT2, 'model', 'n_layer', 10**7))",
                    "refused BundleError: .*n_layer is 10000000 but the graph has only"),
    "n_layer_1e18": ("lm(edited(GPT2, 'model', 'n_layer', 10**18))",
                     "refused BundleError: .*n_layer is 10{18} but the graph has only"),
    "vocab_size_1e18": ("lm(edited(GPT2, 'model', 'vocab_size', 10**18))",
                        "refused BundleError: manifest model.vocab_size is 10{18} but"),
    "chat_vocab_size_2e40": ("lm(edited(CHAT, 'model', 'vocab_size', 2**40))",
                             "refused BundleError: manifest model.vocab_size is 1099511627776"),
    "session_threads": ("lm(edited(CHAT, 'session', 'threads', 10**6))",
                        "refused BundleError: .*'session.threads' must be at most 1024"),
    "qa_window": ("lm(edited(QA, 'qa', 'window', 2 * 10**8))",
                  "refused BundleError: .*'qa.window' must be at most 65536"),
    "context_5mb": ("lm(QA).answer(['谁'], context=['字' * 5 * 10**6])",
                    "refused InputError: context 0 has 5,000,000 characters"),
    "context_50mb": ("lm(QA).answer(['谁'], context=['字' * 5 * 10**7])",
                     "refused InputError: context 0 has 50,000,000 characters"),
    "question_50mb": ("lm(QA).answer(['字' * 5 * 10**7], context=['李白'])",
                      "refused InputError: question 0 has 50,000,000 characters"),
    "million_questions": ("lm(QA).answer(['谁'] * 10**6, context=['李白'] * 10**6)",
                          "refused InputError: 1000000 questions in one call"),
    "engine_slots": ("lm(GPT2).engine(10**12)", "refused InputError: slots must be"),
}


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


@pytest.mark.parametrize(("case", "outcome"), [pytest.param(*v, id=k) for k, v in CASES.items()])
def test_dangerous_sizes_are_refused_within_memory_and_time(gpt2_bundles, case, outcome):
    done = subprocess.run([sys.executable, "-c", CHILD.replace("CASE", case), str(gpt2_bundles["standard"]), str(BUNDLES)],
                          capture_output=True, text=True, timeout=SECONDS, preexec_fn=limited, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.match(outcome, done.stdout), done.stdout
