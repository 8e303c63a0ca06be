"""Reading a training Dataset's ``content_url``, and checking its rows, for every trainer (local or at a vendor).

The URL policy is the attachments' one (``providers/utils/url_reader.py``: data:, file:// inside
``file_roots``, http(s):// only where ``allow_http`` is on and to public or allow-listed hosts, with a size
limit and a deadline), with its own config block because datasets are bigger and
come from other places. Every problem is a 400 naming the request field (``dataset.content_url``).
Vendors take JSON Lines (one JSON object per row) or Parquet as they are; :func:`read_rows` reads every
format a dataset may come in (JSON Lines, JSON, CSV, Parquet: ``dataset_formats.py``) and checks each row
against the dataset's declared columns (``dataset_columns.py``). :func:`resolve_dataset` turns a request's
dataset field, inline or the uuid of a dataset created with /datasets/create, into the Dataset.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field

from llama_stack.apis.datasets import Dataset, DatasetColumnType
from llama_stack.apis.errors import NotFoundError
from llama_stack.providers.utils.dataset_columns import CellError, check_value
from llama_stack.providers.utils.dataset_formats import PARQUET_MAGIC, Format, RowLimits, detect_format, parse_rows
from llama_stack.providers.utils.url_reader import MIB, URLReader, URLSourceConfig
from llama_stack.providers.utils.url_reader import bad_field as _bad

# How many known datasets a 404 names.
_SHOWN_KNOWN = 20


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
        data, _ = await self.read_typed(url, where, max_bytes=max_bytes, limit=limit)
        return data

    async def read_typed(
        self, url: str, where: str, *, max_bytes: int | None = None, limit: str | None = None
    ) -> tuple[bytes, str | None]:
        """The dataset's bytes and the mime type they came with (a data: URL's, a server's; None for a file)."""
        data, mime_type = await self._urls.read(url, where, max_bytes=max_bytes, limit=limit)
        if not data:
            raise _bad(where, "the dataset is empty", self.provider)
        return data, mime_type


@dataclass(frozen=True)
class DatasetContent:
    """A dataset as read: its rows (each checked against its columns), the format they came in, and the
    sha256 of its bytes (to tell whether it changed since it was last read)."""

    rows: list[dict[str, Any]]
    format: Format
    sha256: str


async def read_dataset(
    reader: DatasetReader,
    dataset: Dataset,
    where: str,
    *,
    max_rows: int | None = None,
    known: DatasetContent | None = None,
) -> DatasetContent:
    """Reads ``dataset.content_url`` under the reader's policy, parses its rows and checks them against
    ``dataset.columns``; a 400 naming ``where`` (and the line, row and column at fault) otherwise.

    ``known`` is what an earlier read of the same dataset gave: when the bytes are the same, it is answered
    without parsing them again.
    """
    data, mime_type = await reader.read_typed(dataset.content_url, where)
    if known is not None and hashlib.sha256(data).hexdigest() == known.sha256:
        return known
    limits = RowLimits(where=where, provider=reader.provider, max_rows=max_rows, max_bytes=reader.config.max_bytes)
    # Parsing a dataset of many megabytes takes a while: not on the event loop, which serves other requests.
    return await asyncio.to_thread(_content, data, dataset.content_url, mime_type, dataset.columns, limits)


async def read_rows(
    reader: DatasetReader, dataset: Dataset, where: str, *, max_rows: int | None = None
) -> list[dict[str, Any]]:
    """The rows of ``dataset`` (JSON Lines, JSON, CSV or Parquet), each checked against its columns.

    A declared column that a row lacks, or holds a value of another type, is a 400 naming the row (from 1)
    and the column and saying what was expected. Columns the dataset does not declare are kept as they are.
    """
    return (await read_dataset(reader, dataset, where, max_rows=max_rows)).rows


def _content(
    data: bytes, url: str, mime_type: str | None, columns: Mapping[str, DatasetColumnType], limits: RowLimits
) -> DatasetContent:
    fmt = detect_format(data, url, mime_type)
    rows = parse_rows(data, fmt, columns, limits)
    if not rows:
        raise limits.bad("the dataset has no rows")
    check_rows(rows, columns, limits)
    return DatasetContent(rows=rows, format=fmt, sha256=hashlib.sha256(data).hexdigest())


def check_rows(rows: list[dict[str, Any]], columns: Mapping[str, DatasetColumnType], limits: RowLimits) -> None:
    """Each row holds each declared column, with a value of the column's type; a 400 at the first that does not."""
    for number, row in enumerate(rows, 1):
        for column, column_type in columns.items():
            if column not in row:
                present = ", ".join(repr(name) for name in list(row)[:20]) or "none"
                raise limits.bad(f"row {number}, column {column!r}: missing (the row's columns: {present})")
            try:
                check_value(row[column], column_type)
            except CellError as exc:
                raise limits.bad(f"row {number}, column {column!r}: {exc}") from None


async def resolve_dataset(
    value: Dataset | str, datasets: Any | None, where: str, *, provider: str | None = None
) -> Dataset:
    """The Dataset a request field holds: an inline one as it is, a uuid looked up in the datasets API.

    ``datasets`` is the datasets API (``context.deps.get(Api.datasets)``), None where the distribution does
    not serve it: a uuid is then a 400 saying so. An unknown uuid is a 404 naming the field and the datasets
    that exist.
    """
    if isinstance(value, Dataset):
        return value
    if datasets is None:
        raise _bad(
            where,
            f"names the dataset {value!r} by uuid, but this distribution does not serve the datasets API "
            "(/datasets/create); send the dataset itself ({columns, content_url}) instead",
            provider,
        )
    try:
        found: Dataset = await datasets.get_dataset(dataset_id=value)
    except NotFoundError:
        known = sorted(str(info.uuid) for info in await datasets.list_datasets())
        shown = ", ".join(repr(name) for name in known[:_SHOWN_KNOWN]) or "none"
        more = f" and {len(known) - _SHOWN_KNOWN} more" if len(known) > _SHOWN_KNOWN else ""
        raise NotFoundError(
            f"{where}: no dataset {value!r} was created with /datasets/create (datasets: {shown}{more})",
            param=where,
            code="dataset_not_found",
            provider=provider,
        ) from None
    return found


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


async def resolve_training_datasets(
    dataset: Dataset | str, validation_dataset: Dataset | str, datasets: Any | None, *, provider: str | None = None
) -> tuple[Dataset, Dataset]:
    """A training request's ``dataset`` and ``validation_dataset``, each inline or by uuid (see
    :func:`resolve_dataset`)."""
    train = await resolve_dataset(dataset, datasets, "dataset", provider=provider)
    validation = await resolve_dataset(validation_dataset, datasets, "validation_dataset", provider=provider)
    return train, validation
