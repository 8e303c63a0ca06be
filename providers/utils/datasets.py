"""Reading a training Dataset's ``content_url``, and checking its rows, for every trainer (local or at a vendor).

The URL policy is the attachments' one (``providers/utils/url_reader.py``: data:, file:// inside
``file_roots``, http(s):// only where ``allow_http`` is on and to public or allow-listed hosts, with a size
limit and a deadline), with its own config block because datasets are bigger and
come from other places. Every problem is a 400 naming the request field (``dataset.content_url``).
Datasets are JSON Lines (one JSON object per row) or Parquet.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from pydantic import Field

from llama_stack.providers.utils.url_reader import MIB, URLReader, URLSourceConfig
from llama_stack.providers.utils.url_reader import bad_field as _bad

PARQUET_MAGIC = b"PAR1"


class DatasetSourceConfig(URLSourceConfig):
    """Where a provider may read training data from (the ``datasets:`` block of its config)."""

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
        default=30.0,
        gt=0,
        description="Seconds allowed to connect to, and then between reads from, a dataset's server.",
    )
    http_deadline_s: float = Field(
        default=600.0,
        gt=0,
        description="Seconds one http(s):// dataset may take in all: resolving, redirects and the whole body.",
    )
    allow_http: bool = Field(
        default=False,
        description=(
            "Fetch http(s):// datasets. Off by default (refused with a 400); when on, hosts resolving to loopback, "
            "private or other non-public addresses are still refused unless allowed_hosts names them."
        ),
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
        self._urls = URLReader(config, noun="dataset", block="datasets", provider=provider, transport=transport)

    async def read(self, url: str, where: str, *, max_bytes: int | None = None, limit: str | None = None) -> bytes:
        """The dataset's bytes; ``max_bytes`` lowers the limit (``limit`` says whose it is in the 400)."""
        data, _ = await self._urls.read(url, where, max_bytes=max_bytes, limit=limit)
        if not data:
            raise _bad(where, "the dataset is empty", self.provider)
        return data


async def read_training_data(
    read: Callable[[str, str], Awaitable[bytes]], train_url: str, validation_url: str | None
) -> tuple[bytes, bytes | None]:
    """A job's training data and its validation data, with ``read(url, where)``.

    Both are read (and checked) before either is used, so that a bad validation set fails the request
    before anything is uploaded or trained. The validation data is None when it is the training data (the
    same URL: read once) or when ``validation_url`` is None (the job validates on nothing of its own).
    """
    train = await read(train_url, "dataset.content_url")
    if validation_url is None or validation_url == train_url:
        return train, None
    return train, await read(validation_url, "validation_dataset.content_url")


def file_extension(data: bytes) -> str:
    """``.parquet`` for Parquet data, else ``.jsonl`` (the two formats datasets come in)."""
    return ".parquet" if data[:4] == PARQUET_MAGIC else ".jsonl"


def check_jsonl(data: bytes, where: str, provider: str | None = None) -> int:
    """The number of records in JSON Lines ``data``; 400 naming the first line that is not a JSON object.

    Checked before training starts, so a malformed file fails the request instead of the job later.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _bad(
            where,
            f"the dataset is not UTF-8 text ({exc.reason} at byte {exc.start}); send JSON Lines or Parquet",
            provider,
        ) from None
    records = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(
                where,
                f"line {number} is not JSON ({exc.msg}); the dataset must be JSON Lines, one object per line",
                provider,
            ) from None
        if not isinstance(record, dict):
            raise _bad(where, f"line {number} is a JSON {type(record).__name__}, not an object", provider)
        records += 1
    if not records:
        raise _bad(where, "the dataset has no records", provider)
    return records
