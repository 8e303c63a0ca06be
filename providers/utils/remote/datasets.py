"""Reading a training Dataset's ``content_url`` so that a remote provider can upload it to its vendor.

The URL policy is the attachments' one (see ``providers/utils/inference/attachments.py``), with its own
config block because datasets are bigger and come from other places:

- ``data:`` URLs, base64 (``data:application/jsonl;base64,...``) or percent-encoded;
- ``file://`` URLs, only for files inside one of ``file_roots`` once symlinks and ``..`` are resolved
  (no roots configured: ``file://`` is refused, so that a client cannot make the server upload any file
  it can read);
- ``http://`` and ``https://`` URLs, fetched with httpx, redirects followed, the body abandoned as soon as
  it passes the size limit.

Every problem is a 400 naming the request field (``dataset.content_url``) and what to do instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from llama_stack.apis.errors import BadRequestError

MIB = 1024 * 1024
PARQUET_MAGIC = b"PAR1"


class DatasetSourceConfig(BaseModel):
    """Where a provider may read training data from (the ``datasets:`` block of its config)."""

    model_config = ConfigDict(extra="forbid")

    file_roots: list[Path] = Field(
        default_factory=list,
        description=(
            "Folders whose files file:// dataset URLs may name (after resolving symlinks and '..'); "
            "empty refuses file:// datasets."
        ),
    )
    max_bytes: int = Field(
        default=100 * MIB, ge=1, description="The largest dataset read, in bytes; larger ones get 400."
    )
    http_timeout_s: float = Field(
        default=30.0, gt=0, description="Seconds allowed to connect to, and then between reads from, a dataset's server."
    )
    allow_http: bool = Field(default=True, description="Fetch http(s):// datasets; false refuses them.")


def _bad(where: str, message: str, provider: str | None) -> BadRequestError:
    return BadRequestError(
        f"{where}: {message}", details=[{"loc": where, "in": "body", "message": message}], provider=provider
    )


class DatasetReader:
    """Reads dataset URLs as its :class:`DatasetSourceConfig` allows."""

    def __init__(
        self,
        config: DatasetSourceConfig,
        *,
        provider: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.config = config
        self.provider = provider
        self._transport = transport

    async def read(self, url: str, where: str, *, max_bytes: int | None = None, limit: str | None = None) -> bytes:
        """The dataset's bytes; ``max_bytes`` lowers the limit (``limit`` says whose it is in the 400)."""
        cap = min(self.config.max_bytes, max_bytes) if max_bytes else self.config.max_bytes
        limit = limit or f"the {cap} bytes this provider reads (datasets.max_bytes)"
        scheme = url.split(":", 1)[0].lower()
        if scheme == "data":
            data = self._read_data(url, where, cap, limit)
        elif scheme == "file":
            data = await asyncio.to_thread(self._read_file, url, where, cap, limit)
        elif scheme in ("http", "https"):
            data = await self._read_http(url, where, cap, limit)
        else:
            raise _bad(where, f"unsupported dataset URL scheme {scheme!r}; use data:, file:// or http(s)://", self.provider)
        if not data:
            raise _bad(where, "the dataset is empty", self.provider)
        return data

    def _too_large(self, where: str, size: str, limit: str) -> BadRequestError:
        return _bad(where, f"the dataset ({size}) is larger than {limit}", self.provider)

    def _read_data(self, url: str, where: str, cap: int, limit: str) -> bytes:
        header, comma, payload = url[5:].partition(",")
        if not comma:
            raise _bad(where, "a data: URL needs a comma before its data (data:[<mime type>][;base64],<data>)", self.provider)
        if header.split(";")[-1].strip().lower() == "base64":
            encoded = b"".join(urllib.parse.unquote_to_bytes(payload).split())
            if len(encoded) // 4 * 3 > cap + 2:
                raise self._too_large(where, f"about {len(encoded) // 4 * 3} bytes", limit)
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _bad(where, f"the data: URL's base64 data is invalid: {exc}", self.provider) from None
        else:
            data = urllib.parse.unquote_to_bytes(payload)
        if len(data) > cap:
            raise self._too_large(where, f"{len(data)} bytes", limit)
        return data

    def _read_file(self, url: str, where: str, cap: int, limit: str) -> bytes:
        if not self.config.file_roots:
            raise _bad(
                where,
                "file:// datasets are refused: the provider has no datasets.file_roots configured "
                "(add the folder to its config, or send the data as a data: or https:// URL)",
                self.provider,
            )
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise _bad(where, f"file:// URLs name a local file; got host {parts.netloc!r}", self.provider)
        path = Path(urllib.request.url2pathname(parts.path))
        if not path.is_absolute():
            raise _bad(where, f"a file:// URL needs an absolute path, got {parts.path!r}", self.provider)
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise _bad(where, f"file {str(path)!r} does not exist", self.provider) from None
        roots = [Path(root).expanduser().resolve() for root in self.config.file_roots]
        if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
            allowed = ", ".join(str(r) for r in roots)
            raise _bad(where, f"file {str(path)!r} is outside the folders datasets may come from ({allowed})", self.provider)
        if not resolved.is_file():
            raise _bad(where, f"{str(path)!r} is not a regular file", self.provider)
        try:
            with resolved.open("rb") as handle:
                data = handle.read(cap + 1)
        except OSError as exc:
            raise _bad(where, f"file {str(path)!r} cannot be read: {exc.strerror}", self.provider) from None
        if len(data) > cap:
            raise self._too_large(where, f"over {cap} bytes", limit)
        return data

    async def _read_http(self, url: str, where: str, cap: int, limit: str) -> bytes:
        if not self.config.allow_http:
            raise _bad(where, "http(s):// datasets are refused by this provider (datasets.allow_http is false)", self.provider)
        client = httpx.AsyncClient(
            timeout=self.config.http_timeout_s, follow_redirects=True, max_redirects=5, transport=self._transport
        )
        try:
            async with client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise _bad(where, f"fetching {url} failed: HTTP {response.status_code}", self.provider)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > cap:
                    raise self._too_large(where, f"{declared} bytes", limit)
                body = bytearray()
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) > cap:
                        raise self._too_large(where, f"over {cap} bytes", limit)
                return bytes(body)
        except httpx.HTTPError as exc:
            raise _bad(where, f"fetching {url} failed: {type(exc).__name__}: {exc}", self.provider) from None
        finally:
            await client.aclose()


async def read_training_data(
    read: Callable[[str, str], Awaitable[bytes]], train_url: str, validation_url: str | None
) -> tuple[bytes, bytes | None]:
    """A job's training data and its validation data, with ``read(url, where)``.

    Both are read (and checked) before either is uploaded, so that a bad validation set leaves nothing
    behind at the vendor. The validation data is None when it is the training data (the same URL: read and
    uploaded once) or when ``validation_url`` is None (the job validates on nothing of its own).
    """
    train = await read(train_url, "dataset.content_url")
    if validation_url is None or validation_url == train_url:
        return train, None
    return train, await read(validation_url, "validation_dataset.content_url")


def upload_name(job_uuid: str, role: str) -> str:
    """What the ``role`` ("train", "validation") dataset of ``job_uuid`` is called at the vendor.

    job_uuid is the client's free text: characters file names at the vendors may not hold become ``_``.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", job_uuid)[:100] or "job"
    return f"{safe}-{role}"


def file_extension(data: bytes) -> str:
    """``.parquet`` for Parquet data, else ``.jsonl`` (the two formats the vendors take)."""
    return ".parquet" if data[:4] == PARQUET_MAGIC else ".jsonl"


def check_jsonl(data: bytes, where: str, provider: str | None = None) -> int:
    """The number of records in JSON Lines ``data``; 400 naming the first line that is not a JSON object.

    Checked before uploading, so a malformed file fails the request instead of the vendor's job later.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _bad(where, f"the dataset is not UTF-8 text ({exc.reason} at byte {exc.start}); send JSON Lines or Parquet", provider) from None
    records = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(where, f"line {number} is not JSON ({exc.msg}); the dataset must be JSON Lines, one object per line", provider) from None
        if not isinstance(record, dict):
            raise _bad(where, f"line {number} is a JSON {type(record).__name__}, not an object", provider)
        records += 1
    if not records:
        raise _bad(where, "the dataset has no records", provider)
    return records
