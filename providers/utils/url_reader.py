"""Reading the URLs clients name (attachments, training datasets): one policy, one place.

- ``data:`` URLs, base64 or percent-encoded;
- ``file://`` URLs, only for files inside one of ``file_roots`` once symlinks and ``..`` are resolved (no
  roots configured: ``file://`` is refused, so that a client cannot make the server read any file it can);
- ``http://`` and ``https://`` URLs, fetched with httpx, redirects followed, the body abandoned as soon as
  it passes the size limit.

Every problem is a 400 naming the request field and what to do instead. What is read is called by its
``noun`` ("attachment", "dataset") and its settings by their config block (``attachments.max_bytes``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.parse
import urllib.request
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from llama_stack.apis.errors import BadRequestError

MIB = 1024 * 1024


class URLSourceConfig(BaseModel):
    """Where URLs may be read from; a provider's config blocks subclass it with their own defaults."""

    model_config = ConfigDict(extra="forbid")

    file_roots: list[Path] = Field(
        default_factory=list,
        description="Folders whose files file:// URLs may name (after resolving symlinks and '..'); empty refuses file://.",
    )
    max_bytes: int = Field(default=MIB, ge=1, description="The most bytes read (after base64 decoding); more is a 400.")
    http_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds allowed to connect to, and then between reads from, a URL's server."
    )
    allow_http: bool = Field(default=True, description="Fetch http(s):// URLs; false refuses them.")


def bad_field(where: str, message: str, provider: str | None = None) -> BadRequestError:
    """A 400 naming the request field ``where``."""
    return BadRequestError(
        f"{where}: {message}", details=[{"loc": where, "in": "body", "message": message}], provider=provider
    )


class URLReader:
    """Reads data:, file:// and http(s):// URLs as its config allows."""

    def __init__(
        self,
        config: URLSourceConfig,
        *,
        noun: str,
        block: str,
        provider: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.config = config
        self.noun = noun
        self.block = block
        self.provider = provider
        self._transport = transport
        self._roots = [Path(root).expanduser().resolve() for root in config.file_roots]

    def client(self) -> httpx.AsyncClient:
        """An HTTP client for several reads (the caller closes it)."""
        return httpx.AsyncClient(
            timeout=self.config.http_timeout_s, follow_redirects=True, max_redirects=5, transport=self._transport
        )

    async def read(
        self,
        url: str,
        where: str,
        *,
        max_bytes: int | None = None,
        limit: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> tuple[bytes, str | None]:
        """The URL's bytes and the mime type it declares (a data: URL's, a server's Content-Type; None for a
        file). ``max_bytes`` lowers the limit (``limit`` says whose it is in the 400); ``client`` is reused
        for http(s):// when given."""
        cap = min(self.config.max_bytes, max_bytes) if max_bytes else self.config.max_bytes
        limit = limit or f"the {cap} bytes allowed ({self.block}.max_bytes)"
        scheme = url.split(":", 1)[0].lower()
        if scheme == "data":
            return self._read_data(url, where, cap, limit)
        if scheme == "file":
            return await asyncio.to_thread(self._read_file, url, where, cap, limit), None
        if scheme in ("http", "https"):
            if client is not None:
                return await self._read_http(client, url, where, cap, limit)
            async with self.client() as own:
                return await self._read_http(own, url, where, cap, limit)
        raise self._bad(where, f"unsupported {self.noun} URL scheme {scheme!r}; use data:, file:// or http(s)://")

    def _bad(self, where: str, message: str) -> BadRequestError:
        return bad_field(where, message, self.provider)

    def _too_large(self, where: str, size: str, limit: str) -> BadRequestError:
        return self._bad(where, f"the {self.noun} ({size}) is larger than {limit}")

    def _read_data(self, url: str, where: str, cap: int, limit: str) -> tuple[bytes, str | None]:
        header, comma, payload = url[5:].partition(",")
        if not comma:
            raise self._bad(where, "a data: URL needs a comma before its data (data:[<mime type>][;base64],<data>)")
        params = header.split(";")
        is_base64 = params[-1].strip().lower() == "base64"
        mime_type = ";".join(params[:-1] if is_base64 else params).strip() or None
        if is_base64:
            encoded = b"".join(urllib.parse.unquote_to_bytes(payload).split())
            if len(encoded) // 4 * 3 > cap + 2:
                raise self._too_large(where, f"about {len(encoded) // 4 * 3} bytes", limit)
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise self._bad(where, f"the data: URL's base64 data is invalid: {exc}") from None
        else:
            data = urllib.parse.unquote_to_bytes(payload)
        if len(data) > cap:
            raise self._too_large(where, f"{len(data)} bytes", limit)
        return data, mime_type

    def _read_file(self, url: str, where: str, cap: int, limit: str) -> bytes:
        if not self._roots:
            raise self._bad(
                where,
                f"file:// {self.noun}s are refused: the provider has no {self.block}.file_roots configured "
                f"(add the folder to its config, or send the {self.noun} as a data: or https:// URL)",
            )
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise self._bad(where, f"file:// URLs name a local file; got host {parts.netloc!r}")
        path = Path(urllib.request.url2pathname(parts.path))
        if not path.is_absolute():
            raise self._bad(where, f"a file:// URL needs an absolute path, got {parts.path!r}")
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise self._bad(where, f"file {str(path)!r} does not exist") from None
        if not any(resolved == root or resolved.is_relative_to(root) for root in self._roots):
            allowed = ", ".join(str(r) for r in self._roots)
            raise self._bad(where, f"file {str(path)!r} is outside the folders {self.noun}s may come from ({allowed})")
        if not resolved.is_file():
            raise self._bad(where, f"{str(path)!r} is not a regular file")
        try:
            with resolved.open("rb") as handle:
                data = handle.read(cap + 1)
        except OSError as exc:
            raise self._bad(where, f"file {str(path)!r} cannot be read: {exc.strerror}") from None
        if len(data) > cap:
            raise self._too_large(where, f"over {cap} bytes", limit)
        return data

    async def _read_http(self, client: httpx.AsyncClient, url: str, where: str, cap: int, limit: str) -> tuple[bytes, str | None]:
        if not self.config.allow_http:
            raise self._bad(where, f"http(s):// {self.noun}s are refused by this provider ({self.block}.allow_http is false)")
        try:
            async with client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise self._bad(where, f"fetching {url} failed: HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > cap:
                    raise self._too_large(where, f"{declared} bytes", limit)
                body = bytearray()
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) > cap:
                        raise self._too_large(where, f"over {cap} bytes", limit)
                return bytes(body), response.headers.get("content-type")
        except httpx.HTTPError as exc:
            raise self._bad(where, f"fetching {url} failed: {type(exc).__name__}: {exc}") from None
