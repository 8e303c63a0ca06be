"""Checks of sampling parameters that need the model: what the API's types cannot know."""

from __future__ import annotations

from llama_stack.apis.errors import BadRequestError
from llama_stack.apis.inference import SamplingParams


def check_logit_bias(sampling: SamplingParams, vocab_size: int, model_id: str, provider: str) -> None:
    """A 400 naming ``sampling_params.logit_bias`` when it biases token ids the model does not have."""
    outside = [token for token in sampling.logit_bias if token >= vocab_size]
    if outside:
        raise BadRequestError(
            f"sampling_params.logit_bias: token ids {outside[:5]} are outside model {model_id!r}'s vocabulary of "
            f"{vocab_size} tokens",
            provider=provider,
            param="sampling_params.logit_bias",
        )
