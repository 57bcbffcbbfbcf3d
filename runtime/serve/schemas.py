"""Request bodies of the HTTP API (pydantic): OpenAI's completions and chat completions, QA and Xiangqi.

Fields outside what a model can honour are refused with the field's name, through pydantic's validation;
fields OpenAI defines that change nothing here (user, logprobs: null, ...) are accepted and ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 4
MAX_N = 16
MAX_PROMPTS = 64


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(BaseModel):
    """What both OpenAI endpoints share; unset fields take the bundle's generation defaults."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0)
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        if isinstance(value, str):
            value = [value]
        if value is not None and (len(value) > MAX_STOP_STRINGS or not all(value)):
            raise ValueError(f"at most {MAX_STOP_STRINGS} non-empty stop strings")
        return value


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and isinstance(value[0], (str, list)) and len(value) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts in one request")
        return value


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class QaItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)
    context: str | None = None
    passages: list[str] | None = Field(None, min_length=1)
    top_k: int = Field(1, ge=1, le=20)


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    moves: str | list[str] = ""
    fen: str | None = None
    top: int = Field(1, ge=1, le=200)
    search: bool = False  # choose by the model-guided two-ply search (edgeinfer.xiangqi.search)
