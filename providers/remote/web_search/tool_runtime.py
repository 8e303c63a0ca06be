"""remote::web-search's tool runtime: the ``web_search`` tool on Brave Search or Tavily.

The query and count are checked against the published parameters before anything is sent. The answer
is text for the model (per hit: title, URL, snippet; each bounded) and ``metadata`` with the engine, the
query and the vendor's raw hits. Failures come from the shared :class:`RemoteService`: a key the vendor
refuses is 401 when the request brought it, 502 when it is the configured one; a vendor too slow is 504;
overload after retries 503. An answer of the wrong shape is 502. Keys never appear in any of them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llama_stack.apis.common import BuiltinTool, ToolDefinition
from llama_stack.apis.errors import BadRequestError, NotFoundError, ProviderError
from llama_stack.apis.tool_runtime import ToolInvocationRequest, ToolInvocationResult
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.remote.adapter import RemoteAdapter
from llama_stack.providers.utils.tools import tool_arguments

from .config import WebSearchConfig
from .engines import VENDORS, Hit, Malformed, read_hits, search_request

TOOL = BuiltinTool.web_search.value
MAX_TITLE_CHARS = 200


class WebSearchArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "query" as in the built-in's Llama 3.1 definition (brave_search), so a model's own call fits as is.
    query: str = Field(min_length=1, description="What to search the web for.")
    count: int | None = Field(default=None, ge=1, description="How many results to return.")


class WebSearchToolRuntime(RemoteAdapter[WebSearchConfig]):
    async def list_tools(self) -> list[ToolDefinition]:
        schema = WebSearchArguments.model_json_schema()
        schema.pop("title", None)
        properties = schema["properties"]
        properties["query"] = {
            "type": "string",
            "minLength": 1,
            "maxLength": self.config.max_query_chars,
            "description": properties["query"]["description"],
        }
        properties["count"] = {
            "type": "integer",
            "minimum": 1,
            "maximum": self.config.max_results,
            "default": self.config.default_results,
            "description": properties["count"]["description"],
        }
        return [
            ToolDefinition(
                tool_name=BuiltinTool.web_search,
                description=(
                    f"Search the web ({self.service.vendor}) and get the top results: title, URL and a snippet "
                    "of each. Use it for current events and facts you do not know."
                ),
                parameters=schema,
            )
        ]

    async def invoke_tool(self, request: ToolInvocationRequest) -> ToolInvocationResult:
        name = request.tool_name.value if isinstance(request.tool_name, BuiltinTool) else request.tool_name
        if name != TOOL:
            raise NotFoundError(
                f"{self.service.name} has no tool {name!r}; its tool is {TOOL}", param="tool_name", provider=self._id
            )
        arguments = self._arguments(request.arguments)
        query = " ".join(arguments.query.split())
        count = arguments.count or self.config.default_results
        search = search_request(self.config.engine, query, count)
        answer = await self.service.json(search.method, search.path, params=search.params, json_body=search.body)
        try:
            hits, raw = read_hits(self.config.engine, answer)
        except Malformed as exc:
            raise ProviderError(
                f"{self.service.name} answered the search in an unexpected shape: {exc}", provider=self._id
            ) from None
        return ToolInvocationResult(
            content=self._text(query, hits[:count]),
            metadata={"engine": self.config.engine, "query": query, "hits": raw[:count]},
        )

    def _arguments(self, raw: dict[str, Any]) -> WebSearchArguments:
        arguments = tool_arguments(WebSearchArguments, "web_search", raw, self._id)
        if not arguments.query.strip():
            raise BadRequestError("web_search: arguments.query is blank", param="arguments.query", provider=self._id)
        if len(arguments.query) > self.config.max_query_chars:
            raise BadRequestError(
                f"web_search: arguments.query has {len(arguments.query)} characters; at most "
                f"{self.config.max_query_chars}",
                param="arguments.query",
                provider=self._id,
            )
        if arguments.count is not None and arguments.count > self.config.max_results:
            raise BadRequestError(
                f"web_search: arguments.count is {arguments.count}; {self.service.name} returns at most "
                f"{self.config.max_results} results per call (max_results in its config)",
                param="arguments.count",
                provider=self._id,
            )
        return arguments

    def _text(self, query: str, hits: list[Hit]) -> str:
        if not hits:
            return f'No web results for "{query}".'
        lines = [f'Web results for "{query}" ({self.service.vendor}, {len(hits)}):']
        for number, hit in enumerate(hits, 1):
            lines.append("")
            lines.append(f"{number}. {_cut(hit.title, MAX_TITLE_CHARS)}")
            lines.append(f"   {_cut(hit.url, 2000)}")
            if hit.snippet:
                lines.append(f"   {_cut(hit.snippet, self.config.snippet_chars)}")
        return "\n".join(lines)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


async def build(config: WebSearchConfig, context: ProviderContext) -> WebSearchToolRuntime:
    return WebSearchToolRuntime(config, VENDORS[config.engine].service(config, context))
