"""inline::llm-judge: reward scoring by a judge, which is any llm the distribution serves.

Each ``models:`` entry with ``model_type: reward`` naming this provider is a judge (:mod:`.entry`): the served
llm that answers, a mode and a prompt. Every (dialog, generation) pair of a request becomes one chat to that
llm through the inference API: the judge's system message, then its prompt with ``{conversation}`` (the dialog
as a transcript) and ``{response}`` (the generation) filled in. The chat is greedy, asks for the top 20
logprobs, and for 1 token (yes_no) or 2 (rating: a 10 may take two); the score is read from those
probabilities (:mod:`.answers`), never from the text.

Pairs go as ``batch_chat_completion`` calls of ``batch_size`` where the judge's provider has that method
(inline::llama-cpp does), otherwise as one ``chat_completion`` each; ``max_concurrency`` calls at most in
flight, scores put back in request order. Sizes are bounded before any call: the generations (``max_pairs``),
then the characters of the prompts (``max_request_chars``). One pair that fails fails the request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from llama_stack.apis.common import Dialog, Message, Role
from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    LlamaStackError,
    NotFoundError,
    NotSupportedError,
    ProviderError,
    ProviderTimeoutError,
    ServiceUnavailableError,
)
from llama_stack.apis.inference import (
    BatchChatCompletionRequest,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Inference,
    TokenLogprob,
)
from llama_stack.apis.inspect import Model
from llama_stack.apis.registry import Api
from llama_stack.apis.reward_scoring import RewardScoringRequest, RewardScoringResponse
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner
from llama_stack.providers.utils.model_worker import served_slot
from llama_stack.providers.utils.remote.fan_out import fan_out
from llama_stack.providers.utils.remote.reward_scoring import generation_pairs, scored_response

from . import PROVIDER_TYPE
from .answers import UnreadableAnswer, score, shown
from .config import LLMJudgeConfig
from .entry import JudgeEntry, read_entry

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20  # the most the inference API gives
MAX_TOKENS = {"yes_no": 1, "rating": 2}
# How each dialog message appears in {conversation}.
TURN = "{role}: {text}"
_BATCH_ITEM = re.compile(r"^batch_dialogs\[(\d+)\]")


@dataclass(frozen=True)
class _Pair:
    """One judge chat, and the generation it judges (its field path, for errors)."""

    dialog: Dialog
    where: str


class LLMJudgeScoring:
    """The RewardScoring API over judges; judges come in through ``register_model``."""

    def __init__(self, config: LLMJudgeConfig, provider_id: str, inference: Inference):
        self.config = config
        self.provider_id = provider_id
        self.inference = inference
        self._judges: dict[str, JudgeEntry] = {}
        self._inliner = AttachmentInliner(config.attachments)

    # -- judges -------------------------------------------------------------------------------------

    async def register_model(self, model: Model) -> Model:
        """Check the entry (a 400 naming the model and the field fails the start or the registration)."""
        list_models = getattr(self.inference, "models", None)
        served = list_models() if callable(list_models) else None
        entry = read_entry(model, self.config, served, self.provider_id)
        existing = self._judges.get(model.model_id)
        if existing is not None and existing != entry:
            raise ConflictError(
                f"model {model.model_id!r} is already registered as {existing.describe()}", provider=self.provider_id
            )
        self._judges[model.model_id] = entry
        log.info("%s: %s", self.provider_id, entry.describe())
        return model

    async def unregister_model(self, model_id: str) -> None:
        self._judges.pop(model_id, None)

    # -- the RewardScoring API ----------------------------------------------------------------------

    async def reward_score(self, request: RewardScoringRequest) -> RewardScoringResponse:
        judge = served_slot(self._judges, request.model, self.provider_id, PROVIDER_TYPE)
        count = sum(len(item.k_generations) for item in request.prompt_generations)
        if count > self.config.max_pairs:
            raise BadRequestError(
                f"prompt_generations: {count} generations in one request; {self.provider_id} judges at most "
                f"{self.config.max_pairs} per request (max_pairs): split the request",
                provider=self.provider_id,
                param="prompt_generations",
            )
        texts = await generation_pairs(request, self._inliner, model=request.model, turn=TURN)
        pairs = self._judge_chats(judge, request, texts)
        scores = await self._scores(judge, pairs)
        return scored_response(request, scores)

    # -- helpers ------------------------------------------------------------------------------------

    def _judge_chats(
        self, judge: JudgeEntry, request: RewardScoringRequest, texts: Sequence[tuple[str, str]]
    ) -> list[_Pair]:
        """Each pair's judge chat, the characters bounded before any is built."""
        total = sum(len(judge.prompt) + len(judge.system_prompt) + len(c) + len(r) for c, r in texts)
        if total > self.config.max_request_chars:
            raise BadRequestError(
                f"prompt_generations: the judge prompts would hold {total} characters (each generation's holds its "
                f"whole dialog); {self.provider_id} makes at most {self.config.max_request_chars} per request "
                "(max_request_chars): send fewer or shorter ones per request",
                provider=self.provider_id,
                param="prompt_generations",
            )
        history = [Message(role=Role.system, content=judge.system_prompt)] if judge.system_prompt else []
        wheres = [
            f"prompt_generations[{i}].k_generations[{j}]"
            for i, item in enumerate(request.prompt_generations)
            for j in range(len(item.k_generations))
        ]
        return [
            _Pair(
                Dialog(
                    message=Message(role=Role.user, content=judge.prompt.format(conversation=c, response=r)),
                    message_history=history,
                ),
                where,
            )
            for (c, r), where in zip(texts, wheres, strict=True)
        ]

    async def _scores(self, judge: JudgeEntry, pairs: list[_Pair]) -> list[float]:
        if not pairs:
            return []
        batches = [pairs[at : at + self.config.batch_size] for at in range(0, len(pairs), self.config.batch_size)]
        try:
            scored = await fan_out(batches, lambda batch: self._batch(judge, batch), self.config.max_concurrency)
        except NotSupportedError:
            # The judge's provider has no batch_chat_completion (the router says so before any work): one by one.
            log.debug("%s: %s is judged one pair at a time", self.provider_id, judge.served_model)
            singles = await fan_out(pairs, lambda pair: self._single(judge, pair), self.config.max_concurrency)
            return singles
        return [s for batch in scored for s in batch]

    async def _batch(self, judge: JudgeEntry, batch: list[_Pair]) -> list[float]:
        request = BatchChatCompletionRequest(
            model=judge.served_model,
            batch_dialogs=[pair.dialog for pair in batch],
            max_tokens=MAX_TOKENS[judge.mode],
            logprobs=True,
            top_logprobs=TOP_LOGPROBS,
        )
        try:
            answers = await self.inference.batch_chat_completion(request)
        except NotSupportedError as exc:
            if exc.param is None and "batch_chat_completion" in exc.message:
                raise  # no batch method: _scores goes one by one
            raise self._failed(judge, exc, self._where(batch, exc.param)) from exc
        except Exception as exc:
            raise self._failed(judge, exc, self._where(batch, getattr(exc, "param", None))) from exc
        if len(answers) != len(batch):
            raise ProviderError(
                f"{judge.describe()}: the inference provider answered {len(answers)} of {len(batch)} judge chats",
                provider=self.provider_id,
            )
        return [self._read(judge, pair, answer) for pair, answer in zip(batch, answers, strict=True)]

    async def _single(self, judge: JudgeEntry, pair: _Pair) -> float:
        request = ChatCompletionRequest(
            model=judge.served_model,
            dialog=pair.dialog,
            max_tokens=MAX_TOKENS[judge.mode],
            logprobs=True,
            top_logprobs=TOP_LOGPROBS,
        )
        try:
            answer = await self.inference.chat_completion(request)
        except Exception as exc:
            raise self._failed(judge, exc, pair.where) from exc
        if not isinstance(answer, ChatCompletionResponse):
            raise ProviderError(
                f"{judge.describe()}: the inference provider streamed an answer", provider=self.provider_id
            )
        return self._read(judge, pair, answer)

    def _read(self, judge: JudgeEntry, pair: _Pair, answer: ChatCompletionResponse) -> float:
        if answer.logprobs is None:
            raise ProviderError(
                f"{judge.describe()} answered {pair.where} without logprobs; a judge must be served by an inference "
                "provider that returns them",
                provider=self.provider_id,
                code="judge_without_logprobs",
            )
        tokens: list[TokenLogprob] = answer.logprobs.content
        try:
            return score(judge.mode, tokens)
        except UnreadableAnswer as exc:
            text = answer.content if isinstance(answer.content, str) else "(not text)"
            raise ProviderError(
                f"{judge.describe()} gave no score for {pair.where}: {exc}; it answered {text[:100]!r}, "
                f"{shown(tokens)}. Use a judge model that follows the prompt, or a prompt it follows",
                provider=self.provider_id,
                code="unreadable_judgement",
            ) from None

    @staticmethod
    def _where(batch: list[_Pair], param: str | None) -> str | None:
        """The generation an error about ``batch_dialogs[i]...`` is about; else the prompt, when the batch holds
        the generations of one prompt only."""
        found = _BATCH_ITEM.match(param or "")
        if found is not None and int(found.group(1)) < len(batch):
            return batch[int(found.group(1))].where
        if len(batch) == 1:
            return batch[0].where
        prompts = {pair.where.partition(".")[0] for pair in batch}
        return prompts.pop() if len(prompts) == 1 else None

    def _failed(self, judge: JudgeEntry, exc: BaseException, where: str | None) -> LlamaStackError:
        """An inference failure as this provider's, naming the judge (and the generation, where it is known)."""
        about = f" judging {where}" if where else ""
        if isinstance(exc, (ServiceUnavailableError, ProviderTimeoutError)):
            return type(exc)(
                f"{judge.describe()} could not answer{about}: {exc.message}",
                provider=self.provider_id,
                retry_after=exc.retry_after,
            )
        if isinstance(exc, NotFoundError):
            return NotFoundError(
                f"{judge.describe()}: {exc.message}; the judge's provider_model_id must name a served llm",
                provider=self.provider_id,
                code="judge_model_not_served",
            )
        if isinstance(exc, BadRequestError):
            return BadRequestError(
                f"{judge.describe()} refused the judge prompt{about}: {exc.message}",
                provider=self.provider_id,
                param=where or "prompt_generations",
            )
        if isinstance(exc, LlamaStackError):
            return ProviderError(
                f"{judge.describe()} failed{about} ({exc.status} from inference: {exc.message})",
                provider=self.provider_id,
            )
        log.error("%s: %s failed%s", self.provider_id, judge.describe(), about, exc_info=exc)
        return ProviderError(
            f"{judge.describe()} failed unexpectedly{about} (see the server log)", provider=self.provider_id
        )


def build(config: LLMJudgeConfig, context: ProviderContext) -> LLMJudgeScoring:
    return LLMJudgeScoring(config, context.provider_id, context.deps[Api.inference])
