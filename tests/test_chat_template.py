"""A checkpoint's chat template travels with its bundle and renders as transformers' apply_chat_template does; a
broken or hostile template is a clear error, never a traceback or a way out of Jinja's sandbox."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import templated_checkpoint

import edgeinfer
from edgeinfer.errors import BundleError, InputError

pytest.importorskip("torch")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "滚滚长江"},
            {"role": "assistant", "content": "东逝水"}, {"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return templated_checkpoint(tmp_path_factory.mktemp("templated") / "hf")


@pytest.fixture(scope="module")
def bundle(checkpoint, tmp_path_factory):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    folder = tmp_path_factory.mktemp("templated-bundle") / "b"
    export_hf_checkpoint(checkpoint, folder)
    return folder


def test_the_bundle_renders_and_tokenizes_messages_as_transformers_does(checkpoint, bundle):
    from transformers import AutoTokenizer

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["files"]["chat_template"] == "chat_template.jinja"
    assert manifest["chat_template_tokens"]["bos_token"] == "<|endoftext|>"
    theirs = AutoTokenizer.from_pretrained(checkpoint)
    model = edgeinfer.load(bundle, device="cpu")
    for messages in (MESSAGES, MESSAGES[1:2]):
        text = model.chat_template.render(messages)
        assert text == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert model.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
    assert not model.chat_template.render(MESSAGES, add_generation_prompt=False).endswith("assistant\n")


def test_a_role_the_template_refuses_is_an_input_error_in_its_words(bundle):
    model = edgeinfer.load(bundle, device="cpu")
    with pytest.raises(InputError, match="refuses these messages: unknown role tool"):
        model.chat_template.render([{"role": "tool", "content": "42"}])


def test_a_bundle_without_a_template_has_none(lively_bundles):
    assert edgeinfer.load(lively_bundles["contrib"], device="cpu").chat_template is None


def _with_template(bundle, tmp_path, text: str):
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    (folder / "chat_template.jinja").write_text(text)
    return folder


def test_a_template_that_does_not_compile_fails_the_load(bundle, tmp_path):
    with pytest.raises(BundleError, match="chat template 'chat_template.jinja' is not a valid Jinja template"):
        edgeinfer.load(_with_template(bundle, tmp_path, "{% if %}"), device="cpu", verify=False)


def test_a_template_cannot_reach_out_of_its_sandbox(bundle, tmp_path):
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    model = edgeinfer.load(_with_template(bundle, tmp_path, escape), device="cpu", verify=False)
    with pytest.raises(InputError, match="cannot lay out these messages"):
        model.chat_template.render(MESSAGES)


def test_special_token_texts_must_be_strings(bundle, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["chat_template_tokens"] = {"bos_token": 7}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="chat_template_tokens"):
        edgeinfer.load(folder, device="cpu", verify=False)
