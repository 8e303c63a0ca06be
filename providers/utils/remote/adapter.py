"""The part every remote adapter has: its config, the vendor's client, and closing that client at shutdown."""

from __future__ import annotations

from typing import Generic, TypeVar

from .config import RemoteServiceConfig
from .service import RemoteService

ConfigT = TypeVar("ConfigT", bound=RemoteServiceConfig)


class RemoteAdapter(Generic[ConfigT]):
    """Base for an API's adapter to one vendor; subclasses add the API's methods.

    The client is given, not built here, so that tests and ``build`` decide how it reaches the vendor.
    """

    def __init__(self, config: ConfigT, service: RemoteService):
        self.config = config
        self.service = service

    async def shutdown(self) -> None:
        # The client holds the connection pool to the vendor; nothing else outlives a request.
        await self.service.aclose()

    @property
    def _id(self) -> str:
        """The provider id errors name (``provider=``), so a client knows which provider failed."""
        return self.service.provider_id
