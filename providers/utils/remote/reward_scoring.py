"""What remote reward scorers share: every (dialog, generation) pair scored by one vendor call, the calls
fanned out with bounded concurrency, and the scores put back in the request's order.

A provider brings only how one pair is scored (a judge model, a reward classifier) and how the dialog is
written out as text for its vendor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from llama_stack.apis.common import Content
from llama_stack.apis.reward_scoring import (
    KScoredPromptGenerations,
    RewardScoringRequest,
    RewardScoringResponse,
    ScoredMessage,
)
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, located, message_contents
from llama_stack.providers.utils.inference.dialog import iter_messages

from .fan_out import fan_out
from .messages import message_text, transcript

# score(conversation, response): the dialog as a transcript, the generation as text -> its score.
Scorer = Callable[[str, str], Awaitable[float]]


async def score_generations(
    request: RewardScoringRequest,
    inliner: AttachmentInliner,
    score: Scorer,
    *,
    model: str,
    turn: str,
    limit: int,
) -> RewardScoringResponse:
    """Every generation of every prompt scored by ``score``, at most ``limit`` calls at once.

    ``model`` is the one whose attachment limits apply; ``turn`` formats each dialog message in the
    transcript (see :func:`~.messages.transcript`). All attachments are read before the first call, so a
    bad one is a 400 that costs no vendor call; one failed call fails the whole request.
    """
    pairs = await generation_pairs(request, inliner, model=model, turn=turn)
    scores = await fan_out(pairs, lambda pair: score(*pair), limit)
    return scored_response(request, scores)


async def generation_pairs(
    request: RewardScoringRequest, inliner: AttachmentInliner, *, model: str, turn: str
) -> list[tuple[str, str]]:
    """Every (conversation, response) pair of the request as text, in request order (prompt by prompt, each
    prompt's generations in order), with every attachment read first: a bad one is a 400 naming its field."""
    contents: list[tuple[Content, str]] = []
    for i, item in enumerate(request.prompt_generations):
        at = f"prompt_generations[{i}]"
        contents += message_contents(iter_messages(item.dialog, f"{at}.dialog"))
        contents += message_contents(located(item.k_generations, f"{at}.k_generations"))
    texts = await inliner.fetch(contents, model=model)

    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(request.prompt_generations):
        at = f"prompt_generations[{i}]"
        conversation = transcript(iter_messages(item.dialog, f"{at}.dialog"), texts, turn=turn)
        for j, generation in enumerate(item.k_generations):
            pairs.append((conversation, message_text(generation, f"{at}.k_generations[{j}]", texts)))
    return pairs


def scored_response(request: RewardScoringRequest, scores: Iterable[float]) -> RewardScoringResponse:
    """The response: each prompt's generations with their scores, ``scores`` in :func:`generation_pairs`' order."""
    numbered = iter(scores)
    return RewardScoringResponse(
        scored_generations=[
            KScoredPromptGenerations(
                prompt=item.dialog.message,
                k_scored_generations=[ScoredMessage(message=g, score=next(numbered)) for g in item.k_generations],
            )
            for item in request.prompt_generations
        ]
    )
