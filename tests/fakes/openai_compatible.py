"""A fake OpenAI-compatible server (vLLM, llama.cpp's server, ...) for ``remote::openai-compat``.

Requests are validated against the ``/v1`` routes of this project's own OpenAPI document, which follow
OpenAI's API, and answers are built with its OpenAI models, so they have OpenAI's shapes. It answers
deterministically: chat says ``You said: <the last user message>`` (streamed word by word when asked),
completions continue the prompt, embeddings are 8 numbers from the text's hash.
"""

from __future__ import annotations

import hashlib
from typing import Any

from llama_stack.apis.openai import (
    OpenAIAssistantMessage,
    OpenAIChatChoice,
    OpenAIChatChunkChoice,
    OpenAIChatCompletion,
    OpenAIChatCompletionChunk,
    OpenAIChoiceDelta,
    OpenAICompletion,
    OpenAICompletionChoice,
    OpenAIEmbedding,
    OpenAIEmbeddingList,
    OpenAIEmbeddingsUsage,
)
from llama_stack.openapi import build_openapi

from .vendor_server import SSE, FakeVendor, Recorded

API_KEY = "openai-compatible-test-key"
CREATED = 1715021438


def error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
    return {"error": {"message": message, "type": kinds.get(status, "server_error"), "param": None, "code": None}}


def _spec() -> dict[str, Any]:
    document = build_openapi()
    document["paths"] = {path: item for path, item in document["paths"].items() if path.startswith("/v1/")}
    return document


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    content = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_none=True)


def make_openai_compatible_fake() -> FakeVendor:
    fake = FakeVendor(
        "openai-compatible",
        _spec(),
        base_path="",
        api_key=API_KEY,
        key_of=lambda r: r.headers.get("authorization", "").removeprefix("Bearer ") or None,
        error_body=error_body,
    )

    @fake.route("POST", "/v1/chat/completions")
    def chat(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        text = f"You said: {_last_user_text(body['messages'])}"
        if body.get("stream"):
            words = text.split(" ")
            chunks = [
                OpenAIChatCompletionChunk(
                    id="chatcmpl-1",
                    created=CREATED,
                    model=body["model"],
                    choices=[
                        OpenAIChatChunkChoice(index=0, delta=OpenAIChoiceDelta(content=(" " if i else "") + word))
                    ],
                )
                for i, word in enumerate(words)
            ]
            last = OpenAIChatCompletionChunk(
                id="chatcmpl-1",
                created=CREATED,
                model=body["model"],
                choices=[OpenAIChatChunkChoice(index=0, delta=OpenAIChoiceDelta(), finish_reason="stop")],
            )
            return SSE([_dump(chunk) for chunk in [*chunks, last]])
        answer = OpenAIChatCompletion(
            id="chatcmpl-1",
            created=CREATED,
            model=body["model"],
            choices=[OpenAIChatChoice(index=0, message=OpenAIAssistantMessage(content=text), finish_reason="stop")],
        )
        return _dump(answer)

    @fake.route("POST", "/v1/completions")
    def completions(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        choice = OpenAICompletionChoice(index=0, text=" and so on.", finish_reason="stop")
        answer = OpenAICompletion(id="cmpl-1", created=CREATED, model=body["model"], choices=[choice])
        return SSE([_dump(answer)]) if body.get("stream") else _dump(answer)

    @fake.route("POST", "/v1/embeddings")
    def embeddings(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        texts = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
        data = [OpenAIEmbedding(index=i, embedding=_vector(text)) for i, text in enumerate(texts)]
        words = sum(len(text.split()) for text in texts)
        usage = OpenAIEmbeddingsUsage(prompt_tokens=words, total_tokens=words)
        return _dump(OpenAIEmbeddingList(data=data, model=body["model"], usage=usage))

    return fake


def _vector(text: str) -> list[float]:
    return [(byte - 127.5) / 127.5 for byte in hashlib.sha256(text.encode()).digest()[:8]]
