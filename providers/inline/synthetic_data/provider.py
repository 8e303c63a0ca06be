"""inline::synthetic-data: generate k answers per prompt, score them, keep those the filter keeps.

A run goes through the prompts a chunk at a time (``batch_size // k`` prompts): the chunk's generations come
from one ``batch_chat_completion`` when the model's provider batches (else from concurrent chat calls), are
scored by one ``/reward_scoring/score`` call, and filtered per prompt. Progress is logged between chunks and,
when the request streams, sent as events. Everything a request names (the models, the datasets it saves to)
is checked before the first generation, so a mistake costs no generation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_stack.apis.common import Dialog, Message, Role
from llama_stack.apis.errors import BadRequestError, LlamaStackError, NotSupportedError, ProviderError
from llama_stack.apis.inference import (
    BatchChatCompletionRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    SamplingParams,
)
from llama_stack.apis.registry import Api
from llama_stack.apis.reward_scoring import (
    DialogGenerations,
    KScoredPromptGenerations,
    RewardScoringRequest,
    ScoredMessage,
)
from llama_stack.apis.synthetic_data_generation import (
    FilteringFunction,
    FilteringParams,
    GenerationProgress,
    SaveSettings,
    SyntheticDataGenerationRequest,
    SyntheticDataGenerationResponse,
    SyntheticDataGenerationStreamChunk,
)
from llama_stack.plugins import ProviderContext

from .config import SyntheticDataConfig
from .filtering import filter_scores
from .saving import DatasetSaver

log = logging.getLogger(__name__)

SEED_MODULUS = 2**63


@dataclass(frozen=True)
class Plan:
    """A request with the provider's defaults filled in."""

    prompts: list[Message]
    model: str
    num_generations: int
    sampling_params: SamplingParams
    max_tokens: int
    reward_model: str
    function: FilteringFunction
    filtering: FilteringParams
    save: SaveSettings | None


@dataclass
class Tally:
    """What a run has done so far."""

    started: float = field(default_factory=time.monotonic)
    prompts_done: int = 0
    generations: int = 0
    generation_s: float = 0.0
    scoring_s: float = 0.0
    batched: bool = False
    scored: list[KScoredPromptGenerations] = field(default_factory=list)
    kept: list[KScoredPromptGenerations] = field(default_factory=list)

    def progress(self, prompts_total: int) -> GenerationProgress:
        elapsed = time.monotonic() - self.started
        return GenerationProgress(
            prompts_done=self.prompts_done,
            prompts_total=prompts_total,
            generations_done=self.generations,
            generations_per_second=round(self.generations / elapsed, 3) if elapsed > 0 else 0.0,
            elapsed_s=round(elapsed, 3),
        )


def _refuse(error: LlamaStackError, param: str) -> LlamaStackError:
    """An error of an inner call, pointing at the field of this request that caused it."""
    if error.param in (None, "model"):
        error.param = param
    return error


class SyntheticDataGenerator:
    def __init__(self, config: SyntheticDataConfig, context: ProviderContext):
        self.config = config
        self.provider_id = context.provider_id
        self.inference = context.deps[Api.inference]
        self.reward_scoring = context.deps[Api.reward_scoring]
        datasets = context.deps.get(Api.datasets)
        self.saver = DatasetSaver(datasets, context.provider_id) if datasets is not None else None

    async def generate(
        self, request: SyntheticDataGenerationRequest
    ) -> SyntheticDataGenerationResponse | AsyncIterator[SyntheticDataGenerationStreamChunk]:
        plan = self._plan(request)
        batched = await self._check_models(plan)
        if plan.save is not None:
            if self.saver is None:
                raise BadRequestError(
                    "save needs the datasets API, which this distribution does not serve (add a datasets provider "
                    "such as inline::datasets)",
                    param="save",
                    provider=self.provider_id,
                )
            await self.saver.check_free(plan.save)
        events = self._run(plan, batched)
        if request.stream:
            return events
        async for chunk in events:
            if chunk.result is not None:
                return chunk.result
        raise AssertionError("a run ends with its result")

    # -- before any generation ------------------------------------------------------------------------------

    def _plan(self, request: SyntheticDataGenerationRequest) -> Plan:
        model = request.model or self.config.model
        if model is None:
            raise BadRequestError(
                "model: no model generates: name one in the request (or in the provider's config)", param="model"
            )
        reward_model = (request.reward_scoring.model if request.reward_scoring else None) or self.config.reward_model
        if reward_model is None:
            raise BadRequestError(
                "reward_scoring.model: no reward model scores: name one in the request (or in the provider's config "
                "as reward_model)",
                param="reward_scoring.model",
            )
        for i, prompt in enumerate(request.prompts):
            if prompt.role != Role.user:
                raise BadRequestError(
                    f"prompts[{i}].role: a prompt is a user message, got {prompt.role.value!r}",
                    param=f"prompts[{i}].role",
                )
        k = request.num_generations or self.config.num_generations
        if len(request.prompts) * k > self.config.max_generations:
            raise BadRequestError(
                f"{len(request.prompts)} prompts with {k} generations each is {len(request.prompts) * k} generations, "
                f"more than the {self.config.max_generations} one request may ask for; send fewer prompts at a time",
                param="prompts",
            )
        return Plan(
            prompts=list(request.prompts),
            model=model,
            num_generations=k,
            sampling_params=request.sampling_params or self.config.sampling_params,
            max_tokens=request.max_tokens or self.config.max_tokens,
            reward_model=reward_model,
            function=request.filtering_function,
            filtering=request.filtering_params,
            save=request.save,
        )

    async def _check_models(self, plan: Plan) -> bool:
        """Both models are asked for an empty batch, which checks each is served (and max_tokens against the
        generator's window) without generating anything; answers whether the generator batches."""
        try:
            await self.reward_scoring.reward_score(RewardScoringRequest(prompt_generations=[], model=plan.reward_model))
        except LlamaStackError as exc:
            raise _refuse(exc, "reward_scoring.model") from None
        seeded = plan.sampling_params.seed is not None
        if not self.config.use_batches or seeded:
            # One sampling seed for a whole batch would make its k generations the same.
            await self._probe_generator(plan)
            return False
        try:
            await self.inference.batch_chat_completion(self._batch_request(plan, []))
        except NotSupportedError:
            await self._probe_generator(plan)
            return False
        except LlamaStackError as exc:
            raise _refuse(exc, "model") from None
        return True

    async def _probe_generator(self, plan: Plan) -> None:
        models = getattr(self.inference, "models", None)
        if models is None:
            return
        served = {name for m in models("llm") for name in (m.model_id, *m.aliases)}
        if plan.model not in served:
            raise BadRequestError(
                f"model: '{plan.model}' is not a chat model this distribution serves (served: "
                f"{', '.join(sorted(m.model_id for m in models('llm'))) or 'none'})",
                param="model",
            )

    # -- the run --------------------------------------------------------------------------------------------

    async def _run(self, plan: Plan, batched: bool) -> AsyncIterator[SyntheticDataGenerationStreamChunk]:
        tally = Tally(batched=batched)
        rng = random.Random(plan.filtering.seed)
        per_chunk = max(1, self.config.batch_size // plan.num_generations)
        last_report = tally.started
        log.info(
            "synthetic data: %d prompts x %d generations from %s, scored by %s, filter %s",
            len(plan.prompts),
            plan.num_generations,
            plan.model,
            plan.reward_model,
            plan.function,
        )
        for start in range(0, len(plan.prompts), per_chunk):
            chunk = plan.prompts[start : start + per_chunk]
            began = time.monotonic()
            generations = await self._generate(plan, chunk, start, batched)
            tally.generation_s += time.monotonic() - began
            tally.generations += sum(len(g) for g in generations)
            began = time.monotonic()
            scored = await self._score(plan, chunk, generations)
            tally.scoring_s += time.monotonic() - began
            for item in scored:
                scores = [g.score for g in item.k_scored_generations]
                kept = filter_scores(plan.function, scores, plan.filtering, rng)
                tally.scored.append(item)
                tally.kept.append(
                    KScoredPromptGenerations(
                        prompt=item.prompt, k_scored_generations=[item.k_scored_generations[i] for i in kept]
                    )
                )
            tally.prompts_done += len(chunk)
            now = time.monotonic()
            if now - last_report >= self.config.progress_interval_s or tally.prompts_done == len(plan.prompts):
                last_report = now
                progress = tally.progress(len(plan.prompts))
                log.info(
                    "synthetic data: %d/%d prompts, %d generations, %.2f generations/s",
                    progress.prompts_done,
                    progress.prompts_total,
                    progress.generations_done,
                    progress.generations_per_second,
                )
                yield SyntheticDataGenerationStreamChunk(event="progress", progress=progress)
        statistics = _statistics(plan, tally)
        if plan.save is not None:
            assert self.saver is not None  # checked before the run
            statistics["datasets"] = await self.saver.save(plan, tally.scored, tally.kept)
        log.info(
            "synthetic data: done: %d generations, %d kept, %.1f s",
            statistics["generations"],
            statistics["kept"],
            statistics["seconds"],
        )
        yield SyntheticDataGenerationStreamChunk(
            event="result",
            result=SyntheticDataGenerationResponse(synthetic_data=tally.kept, statistics=statistics),
        )

    def _batch_request(self, plan: Plan, dialogs: list[Dialog]) -> BatchChatCompletionRequest:
        return BatchChatCompletionRequest(
            model=plan.model, batch_dialogs=dialogs, sampling_params=plan.sampling_params, max_tokens=plan.max_tokens
        )

    async def _generate(self, plan: Plan, prompts: Sequence[Message], first: int, batched: bool) -> list[list[Message]]:
        """``num_generations`` answers to each prompt, in order."""
        k = plan.num_generations
        dialogs = [Dialog(message=prompt) for prompt in prompts for _ in range(k)]
        if batched:
            answers = await self.inference.batch_chat_completion(self._batch_request(plan, dialogs))
        else:
            answers = await self._one_by_one(plan, dialogs, first * k)
        if len(answers) != len(dialogs):
            raise ProviderError(
                f"model '{plan.model}' answered {len(answers)} of {len(dialogs)} generations", provider=self.provider_id
            )
        messages = [_as_message(answer) for answer in answers]
        return [messages[i * k : (i + 1) * k] for i in range(len(prompts))]

    async def _one_by_one(self, plan: Plan, dialogs: list[Dialog], first: int) -> list[ChatCompletionResponse]:
        limit = asyncio.Semaphore(self.config.max_concurrency)
        seed = plan.sampling_params.seed

        async def answer(index: int, dialog: Dialog) -> ChatCompletionResponse:
            sampling = plan.sampling_params
            if seed is not None:  # each generation its own seed, so that k of them differ and a rerun repeats them
                sampling = sampling.model_copy(update={"seed": (seed + first + index) % SEED_MODULUS})
            request = ChatCompletionRequest(
                model=plan.model, dialog=dialog, sampling_params=sampling, max_tokens=plan.max_tokens
            )
            async with limit:
                response = await self.inference.chat_completion(request)
            if not isinstance(response, ChatCompletionResponse):
                raise ProviderError(
                    f"model '{plan.model}' answered a stream to a plain request", provider=self.provider_id
                )
            return response

        return list(await asyncio.gather(*(answer(i, d) for i, d in enumerate(dialogs))))

    async def _score(
        self, plan: Plan, prompts: Sequence[Message], generations: list[list[Message]]
    ) -> list[KScoredPromptGenerations]:
        request = RewardScoringRequest(
            model=plan.reward_model,
            prompt_generations=[
                DialogGenerations(dialog=Dialog(message=prompt), k_generations=answers)
                for prompt, answers in zip(prompts, generations, strict=True)
            ],
        )
        response = await self.reward_scoring.reward_score(request)
        scored = response.scored_generations
        counts = [len(item.k_scored_generations) for item in scored]
        if counts != [len(g) for g in generations]:
            raise ProviderError(
                f"reward model '{plan.reward_model}' scored {sum(counts)} of {sum(len(g) for g in generations)} "
                "generations",
                provider=self.provider_id,
            )
        for item in scored:
            for generation in item.k_scored_generations:
                if not math.isfinite(generation.score):
                    raise ProviderError(
                        f"reward model '{plan.reward_model}' answered a score of {generation.score}",
                        provider=self.provider_id,
                    )
        # The scorer echoes each prompt; the prompt sent is the one answered, whatever it echoed.
        return [
            KScoredPromptGenerations(
                prompt=prompt,
                k_scored_generations=[
                    ScoredMessage(message=answer, score=s.score)
                    for answer, s in zip(answers, item.k_scored_generations, strict=True)
                ],
            )
            for prompt, answers, item in zip(prompts, generations, scored, strict=True)
        ]


def _as_message(answer: ChatCompletionResponse) -> Message:
    return Message(role=Role.assistant, content=answer.content, tool_calls=answer.tool_calls)


def _statistics(plan: Plan, tally: Tally) -> dict[str, Any]:
    scores = [g.score for item in tally.scored for g in item.k_scored_generations]
    kept = [g.score for item in tally.kept for g in item.k_scored_generations]
    seconds = time.monotonic() - tally.started
    return {
        "model": plan.model,
        "reward_model": plan.reward_model,
        "filtering_function": plan.function,
        "prompts": len(plan.prompts),
        "generations": tally.generations,
        "kept": len(kept),
        "dropped": len(scores) - len(kept),
        "score_min": min(scores) if scores else None,
        "score_mean": sum(scores) / len(scores) if scores else None,
        "score_max": max(scores) if scores else None,
        "kept_score_mean": sum(kept) / len(kept) if kept else None,
        "batched": tally.batched,
        "seconds": round(seconds, 3),
        "generation_seconds": round(tally.generation_s, 3),
        "scoring_seconds": round(tally.scoring_s, 3),
        "generations_per_second": round(tally.generations / tally.generation_s, 3) if tally.generation_s > 0 else None,
    }


def build(config: SyntheticDataConfig, context: ProviderContext) -> SyntheticDataGenerator:
    return SyntheticDataGenerator(config, context)
