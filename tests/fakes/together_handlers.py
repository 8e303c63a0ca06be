"""Handlers of the fake Together API, answering in the spec's shapes."""

from __future__ import annotations

import time
from typing import Any

from .vendor_server import SSE, FakeVendor, Recorded


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
        text = "Hello from the fake."
        if body.get("stream"):
            return SSE(
                [
                    {"id": "c1", "object": "chat.completion.chunk", "created": int(time.time()), "model": body["model"],
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
                ]
            )
        return {
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        }
