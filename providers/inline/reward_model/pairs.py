"""A reward scoring request as (dialog, generation) pairs of chat messages, bounded before any is rendered.

Each generation is read as the assistant's answer to its dialog (whatever role it says it has): the dialog's
messages, then the generation, as ``{"role", "content"}`` messages for the model's chat template, tool calls
and results written as the provider's chat formats write them (:mod:`~llama_stack.providers.utils.inference.
tool_calls.render`) and text attachments inlined (fetched beforehand by the provider's ``AttachmentInliner``).
No torch here: this runs on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_stack.apis.common import Dialog, Role
from llama_stack.apis.errors import BadRequestError
from llama_stack.apis.reward_scoring import RewardScoringRequest
from llama_stack.providers.utils.inference.attachments import InlinedAttachments
from llama_stack.providers.utils.inference.dialog import iter_messages
from llama_stack.providers.utils.inference.tool_calls.formats import ToolFormat
from llama_stack.providers.utils.inference.tool_calls.render import render_messages
from llama_stack.providers.utils.remote.messages import message_text


@dataclass(frozen=True)
class Pair:
    """One (dialog, generation) pair as chat messages, and the field path of its generation."""

    messages: list[dict[str, str]]
    where: str


def count_pairs(request: RewardScoringRequest) -> int:
    return sum(len(item.k_generations) for item in request.prompt_generations)


def check_chars(request: RewardScoringRequest, texts: InlinedAttachments, max_chars: int) -> int:
    """The characters the model would read (each generation with its whole dialog); a 400 past ``max_chars``,
    found without building any pair's text."""
    total = 0
    for i, item in enumerate(request.prompt_generations):
        at = f"prompt_generations[{i}]"
        dialog = sum(len(message_text(m, where, texts)) for where, m in iter_messages(item.dialog, f"{at}.dialog"))
        for j, generation in enumerate(item.k_generations):
            total += dialog + len(message_text(generation, f"{at}.k_generations[{j}]", texts))
        if total > max_chars:
            raise BadRequestError(
                f"prompt_generations: the dialogs and generations up to {at} already hold {total} characters "
                f"(each generation counted with its dialog); this provider reads at most {max_chars} per request "
                "(max_request_chars): send fewer or shorter ones per request",
                param="prompt_generations",
            )
    return total


def request_pairs(request: RewardScoringRequest, texts: InlinedAttachments, fmt: ToolFormat) -> list[Pair]:
    """Every generation of every prompt with its dialog, in request order."""
    pairs: list[Pair] = []
    for i, item in enumerate(request.prompt_generations):
        history = [*item.dialog.message_history, item.dialog.message]
        for j, generation in enumerate(item.k_generations):
            answer = generation.model_copy(update={"role": Role.assistant})
            dialog = Dialog(message=answer, message_history=history)
            messages = render_messages(dialog, [], "none", fmt, texts.inline, where=f"prompt_generations[{i}].dialog")
            pairs.append(Pair(messages, f"prompt_generations[{i}].k_generations[{j}]"))
    return pairs
