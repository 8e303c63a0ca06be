"""Test-only inference for the judge tests: ``inline::judge-replay`` answers each chat with fixed logprobs.

A model's ``metadata.rules`` is a list of rules, tried in order; the first whose ``when`` is in the chat's last
message (the judge prompt) answers, and a rule without ``when`` answers anything. A rule gives the first token's
alternatives (``first: [[token, probability], ...]``, most likely first: the first one is the token generated)
and optionally the second's (``second``, the same shape); ``no_logprobs: true`` answers without logprobs;
``fail: <status>`` raises that error (with ``param`` when the rule has one; ``crash`` raises an unexpected
exception). No rule matching raises an AssertionError: a test's rules cover what it sends.

With ``batch: false`` in its config the provider has no ``batch_chat_completion`` (as most remote providers).
Every call is recorded (``calls``: ``("batch", [dialogs])`` or ``("single", [dialog])``) with its request, and
``max_in_flight`` is the most calls running at once.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from llama_stack.apis.common import Dialog
from llama_stack.apis.errors import ERRORS_BY_STATUS, NotFoundError
from llama_stack.apis.inference import (
    BatchChatCompletionRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Logprobs,
    TokenLogprob,
    TopLogprob,
)
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderSpec, hookimpl


class JudgeReplayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch: bool = True


def _entry(alternatives: list[list[Any]]) -> TokenLogprob:
    top = [TopLogprob(token=token, logprob=math.log(p)) for token, p in alternatives]
    return TokenLogprob(token=top[0].token, logprob=top[0].logprob, top_logprobs=top)


class JudgeReplay:
    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self.calls: list[tuple[str, list[Dialog]]] = []
        self.requests: list[Any] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def register_model(self, model: Model) -> None:
        self.models[model.model_id] = model

    # A client may register any model at run time: the rules are all it reads.
    register_client_model = register_model

    async def unregister_model(self, model_id: str) -> None:
        self.models.pop(model_id, None)

    def reset(self) -> None:
        self.calls.clear()
        self.requests.clear()
        self.max_in_flight = 0

    def _answer(self, model_id: str, dialog: Dialog, max_tokens: int) -> ChatCompletionResponse:
        if model_id not in self.models:
            raise NotFoundError(f"judge-replay serves no model {model_id!r}", provider="judge-replay")
        prompt = dialog.message.content
        assert isinstance(prompt, str), prompt
        rule = next(r for r in self.models[model_id].metadata["rules"] if r.get("when", "") in prompt)
        fail = rule.get("fail")
        if fail == "crash":
            raise RuntimeError("an internal detail that must not reach a client: /etc/shadow")
        if fail is not None:
            raise ERRORS_BY_STATUS[int(fail)](
                f"the replayed model failed with {fail}",
                provider="judge-replay",
                param=rule.get("param"),
                retry_after=3,
            )
        entries = [_entry(rule["first"])]
        if "second" in rule and max_tokens > 1:
            entries.append(_entry(rule["second"]))
        text = "".join(entry.token for entry in entries)
        logprobs = None if rule.get("no_logprobs") else Logprobs(content=entries)
        return ChatCompletionResponse(content=text, stop_reason="max_tokens", logprobs=logprobs)

    async def _running(self) -> None:
        """Count this call in flight, and let the others start before it ends."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        self.in_flight -= 1

    async def chat_completion(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        self.requests.append(request)
        self.calls.append(("single", [request.dialog]))
        await self._running()
        return self._answer(request.model, request.dialog, request.max_tokens)

    async def completion(self, request: Any) -> Any:
        raise AssertionError("a judge chats")


class BatchingJudgeReplay(JudgeReplay):
    async def batch_chat_completion(self, request: BatchChatCompletionRequest) -> list[ChatCompletionResponse]:
        self.requests.append(request)
        self.calls.append(("batch", list(request.batch_dialogs)))
        await self._running()
        return [self._answer(request.model, dialog, request.max_tokens) for dialog in request.batch_dialogs]


def build(config: JudgeReplayConfig, context: Any) -> JudgeReplay:
    return BatchingJudgeReplay() if config.batch else JudgeReplay()


class JudgeReplayPlugin:
    @hookimpl
    def register_providers(self, register: Any) -> None:
        register(
            ProviderSpec(
                api="inference",
                provider_type="inline::judge-replay",
                config_class=JudgeReplayConfig,
                factory="llm_judge.judge_support:build",
                description="Test-only: replays fixed logprobs.",
            )
        )
