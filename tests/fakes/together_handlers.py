"""Handlers of the fake Together API for inference: chat, completions, embeddings and rerank.

Every answer is in the spec's shape (the fake validates its own JSON answers) and deterministic:

- chat answers ``You said: <the last user message>``; after tool results (the last message has role
  ``tool``) it answers ``The tools answered: <their contents, joined by '; '>``.
- Tool calls, when the request offers tools, the last message is the user's and ``tool_choice`` is not
  ``none``: ``required`` calls the first tool, a tool's name calls that tool, ``auto`` calls each offered
  tool the user message names (in the order named). Every string parameter the tool requires (or its first
  property) gets the user message's text; ids are ``call_fake_<i>``. ``fake.state["tool_arguments"]``, when
  set, is sent verbatim as every call's ``arguments`` string (e.g. invalid JSON).
- ``response_format`` ``json_schema``: an object with each property of the schema (strings get the user
  text, integers the word count, numbers 0.5, booleans true, arrays [], objects {}); ``json_object``:
  ``{"answer": <the text>}``.
- completions answer ``Continuing '<prompt>': and so on.``; streamed, a last special ``</s>`` token
  (text only in ``token``, not in ``choices``) carries the finish reason.
- ``stop`` cuts the answer before the first stop string (finish ``stop``); ``max_tokens`` keeps that many
  words (finish ``length``); otherwise finish ``eos`` (``tool_calls`` for tool calls).
- ``logprobs``: word i (from 0) has logprob ``-(i+1)/10`` and token id i; with ``echo`` the prompt's words
  too, in ``prompt[0].logprobs``.
- Streams send one word per event (each with the leading space), tool-call arguments in two fragments,
  then a last event with the finish reason and the usage (words of the prompt, words of the answer).
- Model names starting with ``missing/`` get Together's 404.
- embeddings: 8 numbers per text from its SHA-256, unit length; ``data`` comes back in reverse order (the
  ``index`` fields are right), as the spec does not promise the order.
- rerank: relevance is the share of the query's words a document contains (rounded to 4 places), most
  relevant first, ``top_n`` kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from .vendor_server import SSE, FakeVendor, Recorded, Reply

CREATED = 1715021438


def install(fake: FakeVendor) -> None:
    @fake.route("POST", "/chat/completions")
    def chat(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        # Other handler modules answer for their own models (a moderation model, a judge): each responder
        # takes the request body and returns an answer, or None to pass.
        for responder in fake.state.get("chat_responders", []):
            answer = responder(body)
            if answer is not None:
                return answer
        if body["model"].startswith("missing/"):
            return _not_found(fake, body["model"])
        return _chat(fake, body)

    @fake.route("POST", "/completions")
    def completions(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        if body["model"].startswith("missing/"):
            return _not_found(fake, body["model"])
        return _completion(fake, body)

    @fake.route("POST", "/embeddings")
    def embeddings(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        if body["model"].startswith("missing/"):
            return _not_found(fake, body["model"])
        texts = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
        data = [{"object": "embedding", "index": i, "embedding": embedding_of(text)} for i, text in enumerate(texts)]
        return {"object": "list", "model": body["model"], "data": list(reversed(data))}

    @fake.route("POST", "/rerank")
    def rerank(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        if body["model"].startswith("missing/"):
            return _not_found(fake, body["model"])
        documents = [_document_text(d) for d in body["documents"]]
        scores = [relevance(body["query"], d) for d in documents]
        order = sorted(range(len(documents)), key=lambda i: -scores[i])
        if body.get("top_n"):
            order = order[: body["top_n"]]
        results = [
            {
                "index": i,
                "relevance_score": scores[i],
                "document": {"text": documents[i] if body.get("return_documents") else None},
            }
            for i in order
        ]
        return {
            "object": "rerank",
            "id": f"rerank-{_next_id(fake)}",
            "model": body["model"],
            "results": results,
            "usage": {
                "prompt_tokens": _words(body["query"]) + sum(map(_words, documents)),
                "completion_tokens": 0,
                "total_tokens": _words(body["query"]) + sum(map(_words, documents)),
            },
        }


# --------------------------------------------------------------------------------------- the answers
def embedding_of(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()[:8]
    raw = [(byte - 127.5) / 127.5 for byte in digest]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def relevance(query: str, document: str) -> float:
    wanted = set(_tokens(query))
    return round(len(wanted & set(_tokens(document))) / max(1, len(wanted)), 4)


def chat_text(messages: list[dict[str, Any]]) -> str:
    """The plain answer to a conversation (before stop, max_tokens and response_format)."""
    last = messages[-1] if messages else {"role": "user", "content": ""}
    if last["role"] == "tool":
        results = []
        for message in reversed(messages):
            if message["role"] != "tool":
                break
            results.insert(0, message["content"])
        return "The tools answered: " + "; ".join(results)
    return f"You said: {last_user_text(messages)}"


def completion_text(prompt: str) -> str:
    return f"Continuing '{prompt}': and so on."


def last_user_text(messages: list[dict[str, Any]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def pieces(text: str) -> list[str]:
    """The answer's words, each with its leading whitespace: joined, they are the text again."""
    return re.findall(r"\s*\S+", text)


def _chat(fake: FakeVendor, body: dict[str, Any]) -> Any:
    messages = body["messages"]
    calls = _tool_calls(fake, body)
    if calls:
        text, finish = "", "tool_calls"
    else:
        text, finish = _limited(_formatted(body, chat_text(messages)), body)
    words = pieces(text)
    usage = _usage(" ".join(m["content"] for m in messages), words)
    ident = f"chatcmpl-{_next_id(fake)}"
    if body.get("stream"):
        return SSE(_chat_events(ident, body, words, calls, finish, usage))
    message: dict[str, Any] = {"role": "assistant", "content": text if not calls else None}
    if calls:
        message["tool_calls"] = calls
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    if body.get("logprobs"):
        choice["logprobs"] = _logprobs_part(words)
    return {
        "id": ident,
        "object": "chat.completion",
        "created": CREATED,
        "model": body["model"],
        "choices": [choice],
        "usage": usage,
    }


def _chat_events(
    ident: str, body: dict[str, Any], words: list[str], calls: list[dict[str, Any]], finish: str, usage: dict[str, int]
) -> list[dict[str, Any]]:
    def event(
        delta: dict[str, Any], finish_reason: str | None = None, logprob: float | None = None, last: bool = False
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": finish_reason}
        if logprob is not None:
            choice["logprobs"] = logprob
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": body["model"],
            "choices": [choice],
            "usage": usage if last else None,
        }

    events = [
        event({"content": word}, logprob=-(i + 1) / 10 if body.get("logprobs") else None)
        for i, word in enumerate(words)
    ]
    for call in calls:
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        for part in (arguments[:half], arguments[half:]):
            fragment = {**call, "function": {"name": call["function"]["name"], "arguments": part}}
            events.append(event({"content": None, "tool_calls": [fragment]}))
    events.append(event({"content": None}, finish_reason=finish, last=True))
    return events


def _completion(fake: FakeVendor, body: dict[str, Any]) -> Any:
    text, finish = _limited(completion_text(body["prompt"]), body)
    words = pieces(text)
    usage = _usage(body["prompt"], words)
    ident = f"cmpl-{_next_id(fake)}"
    if body.get("stream"):
        events = [
            {
                "id": ident,
                "token": {"id": i, "text": word, "logprob": -(i + 1) / 10, "special": False},
                "choices": [{"index": 0, "text": word}],
                "usage": None,
                "finish_reason": None,
            }
            for i, word in enumerate(words)
        ]
        events.append(
            {
                "id": ident,
                "token": {"id": 2, "text": "</s>", "logprob": -0.01, "special": True},
                "choices": [{"index": 0, "text": ""}],
                "usage": usage,
                "finish_reason": finish,
            }
        )
        return SSE(events)
    choice: dict[str, Any] = {"text": text, "finish_reason": finish}
    prompt: dict[str, Any] = {"text": body["prompt"]}
    if body.get("logprobs"):
        choice["logprobs"] = _logprobs_part(words)
        if body.get("echo"):
            prompt["logprobs"] = _logprobs_part(pieces(body["prompt"]))
    return {
        "id": ident,
        "object": "text_completion",
        "created": CREATED,
        "model": body["model"],
        "prompt": [prompt],
        "choices": [choice],
        "usage": usage,
    }


def _tool_calls(fake: FakeVendor, body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = [t["function"] for t in body.get("tools") or []]
    choice = body.get("tool_choice", "auto")
    messages = body["messages"]
    if not tools or choice == "none" or not messages or messages[-1]["role"] != "user":
        return []
    text = messages[-1]["content"]
    if choice == "required":
        chosen = tools[:1]
    elif choice != "auto":
        chosen = [t for t in tools if t["name"] == choice]
    else:
        named = [(text.find(t["name"]), t) for t in tools if t["name"] in text]
        chosen = [t for _, t in sorted(named, key=lambda pair: pair[0])]
    raw = fake.state.get("tool_arguments")
    return [
        {
            "id": f"call_fake_{i}",
            "type": "function",
            "index": i,
            "function": {
                "name": t["name"],
                "arguments": raw if raw is not None else json.dumps(_arguments_for(t, text)),
            },
        }
        for i, t in enumerate(chosen)
    ]


def _arguments_for(function: dict[str, Any], text: str) -> dict[str, Any]:
    schema = function.get("parameters") or {}
    properties = schema.get("properties") or {}
    names = schema.get("required") or list(properties)[:1]
    return {name: text for name in names if properties.get(name, {}).get("type", "string") == "string"}


def _formatted(body: dict[str, Any], text: str) -> str:
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_object":
        return json.dumps({"answer": text})
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"]["schema"]
        return json.dumps(_value_for(schema, last_user_text(body["messages"])))
    return text


def _value_for(schema: dict[str, Any], text: str) -> Any:
    kind = schema.get("type", "string")
    if kind == "object":
        return {name: _value_for(sub, text) for name, sub in (schema.get("properties") or {}).items()}
    return {
        "string": text,
        "integer": len(text.split()),
        "number": 0.5,
        "boolean": True,
        "array": [],
        "null": None,
    }.get(kind, text)


def _limited(text: str, body: dict[str, Any]) -> tuple[str, str]:
    cuts = [text.find(stop) for stop in body.get("stop") or [] if stop in text]
    if cuts:
        return text[: min(cuts)], "stop"
    words = pieces(text)
    if body.get("max_tokens") and len(words) > body["max_tokens"]:
        return "".join(words[: body["max_tokens"]]), "length"
    return text, "eos"


def _logprobs_part(words: list[str]) -> dict[str, Any]:
    return {
        "tokens": words,
        "token_logprobs": [-(i + 1) / 10 for i in range(len(words))],
        "token_ids": list(range(len(words))),
    }


def _usage(prompt: str, words: list[str]) -> dict[str, int]:
    prompt_tokens = _words(prompt)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": prompt_tokens + len(words)}


def _not_found(fake: FakeVendor, model: str) -> Reply:
    return Reply(
        fake.error_body(404, f"Unable to access model {model}. Please visit https://api.together.ai/models"), 404
    )


def _document_text(document: Any) -> str:
    return document if isinstance(document, str) else " ".join(str(v) for v in document.values())


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _words(text: str) -> int:
    return len(text.split())


def _next_id(fake: FakeVendor) -> int:
    fake.state["together_answers"] = fake.state.get("together_answers", 0) + 1
    return fake.state["together_answers"]


__all__ = ["chat_text", "completion_text", "embedding_of", "install", "pieces", "relevance"]
