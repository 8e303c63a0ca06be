"""remote::web-search: the ``web_search`` tool through a search API (Brave Search or Tavily).

Only the declaration; the adapter (httpx only) is imported when a distribution selects the provider.
See docs/providers/web-search.md.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_stack.plugins import ProviderSpec, hookimpl
from llama_stack.providers.utils.remote import remote_provider_specs

from .config import WebSearchConfig

PROVIDER_TYPE = "remote::web-search"
_MODULE = "llama_stack.providers.remote.web_search"

_APIS = (("tool_runtime", WebSearchConfig, "web_search through Brave Search or Tavily, with a key from the YAML."),)


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    for spec in remote_provider_specs(PROVIDER_TYPE, _MODULE, _APIS):
        register(spec)
