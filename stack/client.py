"""One Python client for every API, over HTTP or in-process (library mode): the transport is swapped.

    async with LlamaStackClient.http("http://localhost:8321") as client:
        answer = await client.inference.chat_completion(model="smollm2-135m-instruct",
                                                         dialog={"message": {"role": "user", "content": "Hi"}})

    client = await LlamaStackClient.library("local")     # no server: the providers run in this process

Each API is an attribute (``client.inference``, ``client.memory_banks``, ...) whose methods are the
protocol's; ``client.openai`` has the OpenAI-compatible routes (``create_chat_completion``, ...). A method
takes its request object, or a dict, or the request's fields as keyword arguments; with ``stream=True`` it
returns an async iterator of chunks. Arguments are validated by the same code the
server uses, so both transports fail alike. ``SyncLlamaStackClient`` wraps it all for blocking code.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from llama_stack.apis.errors import LlamaStackError, ProviderError, error_from_body
from llama_stack.apis.inspect import Inspect
from llama_stack.apis.registry import PROTOCOLS

from .endpoints import FACADES, Endpoint, endpoints_of, facade_endpoints
from .request_context import PROVIDER_DATA_HEADER, using_provider_data

if TYPE_CHECKING:
    from llama_stack.apis.agentic_system import AgenticSystem
    from llama_stack.apis.datasets import Datasets
    from llama_stack.apis.inference import Inference
    from llama_stack.apis.memory_banks import MemoryBanks
    from llama_stack.apis.openai import OpenAI
    from llama_stack.apis.post_training import PostTraining
    from llama_stack.apis.reward_scoring import RewardScoring
    from llama_stack.apis.safety import Safety
    from llama_stack.apis.synthetic_data_generation import SyntheticDataGeneration
    from llama_stack.apis.tool_runtime import ToolRuntime

    from .plugins import ProviderRegistry
    from .resolver import Stack


class Transport(Protocol):
    async def call(self, endpoint: Endpoint, kwargs: dict[str, Any]) -> Any: ...

    async def aclose(self) -> None: ...


def _streaming(endpoint: Endpoint, kwargs: dict[str, Any]) -> bool:
    return endpoint.route.streams and bool(getattr(kwargs.get(endpoint.body_name or ""), "stream", False))


class HttpTransport:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | None = 600.0,
        provider_data: Mapping[str, Any] | None = None,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if provider_data:
            headers[PROVIDER_DATA_HEADER] = json.dumps(dict(provider_data))
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    async def call(self, endpoint: Endpoint, kwargs: dict[str, Any]) -> Any:
        params = {
            q.name: _query_value(q.adapter.dump_python(kwargs[q.name], mode="json"))
            for q in endpoint.query
            if kwargs.get(q.name) is not None and q.location == "query"
        }
        content = None
        if endpoint.body_adapter is not None and endpoint.body_name is not None:
            content = endpoint.body_adapter.dump_json(kwargs[endpoint.body_name], exclude_unset=False)
        request = self._http.build_request(
            endpoint.route.method,
            endpoint.url_path(kwargs),
            params=params,
            content=content,
            headers={"Content-Type": "application/json"} if content is not None else None,
        )
        streaming = _streaming(endpoint, kwargs)
        response = await self._http.send(request, stream=streaming)
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            error = error_from_body(response.status_code, _json_or_text(response))
            retry_after = response.headers.get("retry-after")
            if retry_after is not None and retry_after.isdigit():
                error.retry_after = float(retry_after)
            raise error
        if streaming:
            return _read_sse(endpoint, response)
        return _decode(endpoint, response.content)

    async def aclose(self) -> None:
        await self._http.aclose()


def _query_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _decode(endpoint: Endpoint, content: bytes) -> Any:
    adapter = endpoint.response_adapter
    if adapter is None:
        return None
    if endpoint.route.response_format == "jsonl":
        return [adapter.validate_json(line) for line in content.splitlines() if line.strip()]
    return adapter.validate_json(content)


async def _read_sse(endpoint: Endpoint, response: httpx.Response) -> AsyncIterator[Any]:
    adapter = endpoint.chunk_adapter
    assert adapter is not None
    event = "message"
    try:
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
                if endpoint.route.stream_end is not None and data == endpoint.route.stream_end:
                    return
                if event == "error":
                    body = json.loads(data)
                    raise error_from_body(body.get("error", {}).get("status", 500), body)
                yield adapter.validate_json(data)
            elif not line:
                event = "message"
    except httpx.HTTPError as exc:
        raise ProviderError(f"The stream from the server broke off: {exc}") from exc
    finally:
        await response.aclose()


class LibraryTransport:
    """Calls the stack's implementations directly, in this process."""

    def __init__(self, stack: Stack, provider_data: Mapping[str, Any] | None = None):
        self.stack = stack
        self.provider_data = dict(provider_data or {})

    async def call(self, endpoint: Endpoint, kwargs: dict[str, Any]) -> Any:
        with using_provider_data(self.provider_data):
            return await getattr(endpoint.implementation(self.stack), endpoint.name)(**kwargs)

    async def aclose(self) -> None:
        await self.stack.shutdown()


def _arguments(endpoint: Endpoint, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Map a call's arguments onto (query values, body); loose keywords become the body's fields."""
    names = endpoint.param_names
    if len(args) > len(names):
        raise TypeError(f"{endpoint.name}() takes at most {len(names)} positional arguments")
    given = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key in given:
            raise TypeError(f"{endpoint.name}() got multiple values for argument '{key}'")
        given[key] = value
    query = {q.name: given.pop(q.name) for q in endpoint.query if q.name in given}
    body = given.pop(endpoint.body_name, None) if endpoint.body_name else None
    if given:
        if endpoint.body_name is None or body is not None:
            raise TypeError(f"{endpoint.name}() got unexpected keyword arguments: {', '.join(sorted(given))}")
        body = given
    return query, body


class ApiClient:
    """The methods of one API's protocol, bound to a transport."""

    def __init__(self, transport: Transport, endpoints: tuple[Endpoint, ...]):
        for endpoint in endpoints:
            setattr(self, endpoint.name, self._method(transport, endpoint))

    @staticmethod
    def _method(transport: Transport, endpoint: Endpoint) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            query, body = _arguments(endpoint, args, kwargs)
            return await transport.call(endpoint, endpoint.bind(query, body))

        call.__name__ = endpoint.name
        call.__doc__ = endpoint.summary
        return call


class LlamaStackClient:
    inference: Inference
    agentic_system: AgenticSystem
    memory_banks: MemoryBanks
    safety: Safety
    datasets: Datasets
    post_training: PostTraining
    reward_scoring: RewardScoring
    synthetic_data_generation: SyntheticDataGeneration
    tool_runtime: ToolRuntime
    openai: OpenAI

    def __init__(self, transport: Transport):
        self.transport = transport
        for api, protocol in PROTOCOLS.items():
            setattr(self, api.value, ApiClient(transport, endpoints_of(protocol, api)))
        for facade in FACADES:
            setattr(self, facade.name, ApiClient(transport, facade_endpoints(facade)))
        inspect = ApiClient(transport, endpoints_of(Inspect, None))
        self.health, self.list_models, self.list_providers = inspect.health, inspect.list_models, inspect.list_providers  # type: ignore[attr-defined]
        self.register_model, self.unregister_model = inspect.register_model, inspect.unregister_model  # type: ignore[attr-defined]

    @classmethod
    def http(
        cls,
        base_url: str = "http://localhost:8321",
        *,
        api_key: str | None = None,
        timeout: float | None = 600.0,
        provider_data: Mapping[str, Any] | None = None,
    ) -> LlamaStackClient:
        """A client for a running server; ``api_key`` defaults to $LLAMA_STACK_API_KEY.

        ``provider_data`` goes with every request (e.g. ``{"together_api_key": ...}``: see the providers' docs).
        """
        api_key = api_key or os.environ.get("LLAMA_STACK_API_KEY")
        return cls(HttpTransport(base_url, api_key=api_key, timeout=timeout, provider_data=provider_data))

    @classmethod
    async def library(
        cls,
        distribution: str | os.PathLike[str] | Stack,
        *,
        env: Mapping[str, str] | None = None,
        registry: ProviderRegistry | None = None,
        provider_data: Mapping[str, Any] | None = None,
        wait_for_models: bool = True,
    ) -> LlamaStackClient:
        """Start a distribution (a built-in name, a YAML path, or a Stack) in this process.

        With ``wait_for_models`` (the default) it returns once every model is served, models that load in the
        background included, so the first call does not meet a 503; a model that fails to load fails the start.
        Without, it returns as soon as the stack serves (as the server does) and such calls answer 503 until then.
        """
        from .readiness import wait_until_loaded
        from .resolver import Stack

        stack = (
            distribution if isinstance(distribution, Stack) else Stack.from_distribution(distribution, env, registry)
        )
        await stack.start()
        if wait_for_models:
            try:
                await wait_until_loaded(stack.models, {p.provider_id: p.impl for p in stack.providers.values()})
            except BaseException:
                await stack.shutdown()
                raise
        return cls(LibraryTransport(stack, provider_data))

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> LlamaStackClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class SyncLlamaStackClient:
    """The same client for blocking code: an event loop runs in a background thread."""

    def __init__(self, make_client: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llama-stack-client", daemon=True)
        self._thread.start()
        self._client: LlamaStackClient = self._run(make_client())
        for name in [api.value for api in PROTOCOLS] + [facade.name for facade in FACADES]:
            setattr(self, name, _SyncApi(self, getattr(self._client, name)))
        for name in ("health", "list_models", "list_providers", "register_model", "unregister_model"):
            setattr(self, name, self._wrap(getattr(self._client, name)))

    @classmethod
    def http(cls, base_url: str = "http://localhost:8321", **options: Any) -> SyncLlamaStackClient:
        async def make() -> LlamaStackClient:
            return LlamaStackClient.http(base_url, **options)

        return cls(make)

    @classmethod
    def library(cls, distribution: Any, **options: Any) -> SyncLlamaStackClient:
        return cls(lambda: LlamaStackClient.library(distribution, **options))

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _wrap(self, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._run(method(*args, **kwargs))
            return self._iterate(result) if isinstance(result, AsyncIterator) else result

        call.__name__ = method.__name__
        call.__doc__ = method.__doc__
        return call

    def _iterate(self, chunks: AsyncIterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(chunks.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                self._run(aclose())

    def close(self) -> None:
        try:
            self._run(self._client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncLlamaStackClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _SyncApi:
    def __init__(self, owner: SyncLlamaStackClient, api: ApiClient):
        for name, method in vars(api).items():
            setattr(self, name, owner._wrap(method))


__all__ = ["LlamaStackClient", "LlamaStackError", "SyncLlamaStackClient"]
