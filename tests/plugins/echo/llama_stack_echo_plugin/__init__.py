"""A third-party provider plugin, as a user would write one: the hook and the config model only.

The provider itself lives in ``provider.py`` and is imported only when a distribution selects it.
"""

from pydantic import BaseModel, ConfigDict

from llama_stack.plugins import ProviderSpec, hookimpl


class EchoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: str = ""


@hookimpl
def register_providers(register):
    register(
        ProviderSpec(
            api="inference",
            provider_type="remote::echo",
            config_class=EchoConfig,
            factory="llama_stack_echo_plugin.provider:build",
            description="Echoes the last user message (test plugin)",
        )
    )
