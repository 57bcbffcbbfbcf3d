"""A checkpoint's own chat template, shipped in its bundle and rendered as transformers' `apply_chat_template` does.

Why: an instruction-tuned checkpoint answers well only in the layout it was trained on (its role markers, its
special tokens), and that layout lives in the checkpoint as a Jinja template (`chat_template` in
tokenizer_config.json, or chat_template.jinja). Export copies it into the bundle (`files.chat_template`); the server's
/v1/chat/completions and `CausalLM.chat_template` render messages with it. A template is bundle content, so it runs
in Jinja's immutable sandbox: it sees the messages and the special tokens, nothing of the process.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from ..bundle import first_line, inside
from ..errors import BundleError, InputError

MAX_TEMPLATE_BYTES = 1 << 20


class ChatTemplate:
    """A compiled chat template and the special tokens it may name (bos_token, eos_token...)."""

    def __init__(self, source: str, special_tokens: dict[str, str], origin: str = "chat template") -> None:
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # the environment transformers renders with: blocks trimmed, {% break %}, a tojson that keeps non-ASCII text
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = environment.from_string(source)
        except TemplateError as exc:
            raise BundleError(f"{origin} is not a valid Jinja template: {first_line(exc)}") from exc
        self.special_tokens = special_tokens

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]), ending where the reply starts."""
        from jinja2 import TemplateError

        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except _TemplateRefused as exc:
            raise InputError(f"the bundle's chat template refuses these messages: {exc}") from exc
        except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise InputError(f"the bundle's chat template cannot lay out these messages: {first_line(exc)}") from exc


def load_chat_template(folder: Path, manifest: dict) -> ChatTemplate | None:
    """The bundle's chat template (None when it ships none), with the special tokens' text the manifest records for
    it (`chat_template_tokens`: bos_token, eos_token... as the checkpoint's tokenizer names them)."""
    name = manifest["files"].get("chat_template")
    if not name:
        return None
    path = inside(folder, "chat_template", name)
    if path.stat().st_size > MAX_TEMPLATE_BYTES:
        raise BundleError(f"bundle {folder}: chat template {name!r} is over {MAX_TEMPLATE_BYTES} bytes")
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"bundle {folder}: chat template {name!r} is not UTF-8 text") from exc
    tokens = manifest.get("chat_template_tokens", {})
    if not (isinstance(tokens, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in tokens.items())):
        raise BundleError(f"bundle {folder}: manifest field 'chat_template_tokens' must map names to token texts")
    return ChatTemplate(source, tokens, origin=f"bundle {folder}: chat template {name!r}")


class _TemplateRefused(Exception):
    """What a template's raise_exception(...) raises: its own words on why the messages do not fit it."""


def _raise_exception(message: str):
    raise _TemplateRefused(message)


def _tojson(value, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
