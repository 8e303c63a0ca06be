"""inline::synthetic-data: synthetic data generation on the distribution's own models.

For each prompt, k generations from a served model (sampled; one batch call where the model's provider
batches, else concurrent calls), scored through the reward scoring API, kept or dropped by the request's
filtering function, and optionally saved as datasets that post-training takes by uuid. Only the declaration
here; see docs/providers/synthetic-data.md.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl

from .config import SyntheticDataConfig


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            api="synthetic_data_generation",
            provider_type="inline::synthetic-data",
            config_class=SyntheticDataConfig,
            factory="llama_stack.providers.inline.synthetic_data.provider:build",
            depends_on=("inference", "reward_scoring"),
            optional_depends_on=("datasets",),
            description="k sampled generations per prompt from a served model, scored by a served reward model, "
            "filtered (top_k, top_p, sigmoid, ...) and saved as datasets for post-training.",
        )
    )
