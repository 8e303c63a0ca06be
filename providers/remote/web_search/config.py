"""Config of remote::web-search: which search API (Brave or Tavily), its key, and how much of an answer is kept."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llama_stack.providers.utils.remote import RemoteServiceConfig

Engine = Literal["brave", "tavily"]

DEFAULT_URLS: dict[str, str] = {
    "brave": "https://api.search.brave.com/res/v1",
    "tavily": "https://api.tavily.com",
}


class WebSearchConfig(RemoteServiceConfig):
    engine: Engine = Field(default="brave", description="The search API: brave (Brave Search) or tavily (Tavily).")
    url: str = Field(
        default="",
        description=(
            "The search API's base URL; empty: the engine's own (https://api.search.brave.com/res/v1 for brave, "
            "https://api.tavily.com for tavily)."
        ),
    )
    timeout: float = Field(default=15.0, gt=0, description="Seconds to wait for the search API per attempt.")
    default_results: int = Field(default=5, ge=1, le=20, description="Hits per search when the call names no count.")
    max_results: int = Field(default=10, ge=1, le=20, description="The most hits one call may ask for (count).")
    max_query_chars: int = Field(
        default=400, ge=1, le=400, description="The longest query accepted (Brave's own limit is 400 characters)."
    )
    snippet_chars: int = Field(
        default=500, ge=50, le=5000, description="Characters of each hit's snippet put in the text for the model."
    )

    @model_validator(mode="after")
    def _engine_url(self) -> WebSearchConfig:
        if not self.url.strip():
            self.url = DEFAULT_URLS[self.engine]
        if self.default_results > self.max_results:
            raise ValueError(f"default_results ({self.default_results}) exceeds max_results ({self.max_results})")
        return self
