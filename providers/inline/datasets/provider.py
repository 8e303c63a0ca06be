"""inline::datasets: create, get, list and delete datasets, and serve their rows a page at a time.

A dataset is acknowledged only once its URL has been read under the config's policy and every row checked
against its columns, so a bad dataset is a 400 at creation, not a failed training job later. Its rows are
read again from the URL when asked for (a data: URL holds them itself; a file or page that changed since is
checked again, and the new row count kept).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from pydantic_core import PydanticSerializationError

from llama_stack.apis.datasets import (
    MAX_ROWS_PER_PAGE,
    CreateDatasetRequest,
    Dataset,
    DatasetInfo,
    DatasetRows,
)
from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.datasets import DatasetContent, DatasetReader, read_dataset

from .config import DatasetsConfig
from .store import DatasetStore, StoredDataset

log = logging.getLogger(__name__)

MAX_UUID_LENGTH = 256
# How many known datasets a 404 names.
SHOWN_IN_404 = 20
# Datasets whose parsed rows are kept between page requests (used again while their bytes stay the same).
CACHED_DATASETS = 2


class DatasetsImpl:
    def __init__(self, config: DatasetsConfig, context: ProviderContext):
        self.config = config
        self.provider_id = context.provider_id
        self.reader = DatasetReader(config, provider=context.provider_id)
        self.store = DatasetStore(config.db_path or context.storage_dir / "datasets.sqlite")
        # Paging through a dataset re-reads its URL each time; parsing it again only when its bytes changed.
        self._read: OrderedDict[str, DatasetContent] = OrderedDict()

    # ------------------------------------------------------------------------------------------ routes
    async def create_dataset(self, request: CreateDatasetRequest) -> None:
        uuid = _checked_uuid(request.uuid, "uuid")
        _check_unicode(request.dataset)
        if self.store.get(uuid) is not None:
            raise self._exists(uuid)
        content = await read_dataset(self.reader, request.dataset, "dataset.content_url", max_rows=self.config.max_rows)
        stored = StoredDataset(
            uuid=uuid,
            dataset=request.dataset,
            row_count=len(content.rows),
            sha256=content.sha256,
            format=content.format,
            created_at=datetime.now(timezone.utc),
        )
        if not self.store.add(stored):  # created by a concurrent request while this one read the URL
            raise self._exists(uuid)
        self._keep(uuid, content)
        log.info("dataset %r created: %d rows of %s", uuid, stored.row_count, content.format)

    async def get_dataset(self, dataset_id: str) -> Dataset:
        return self._stored(dataset_id).dataset

    async def delete_dataset(self, dataset_id: str) -> None:
        uuid = _checked_uuid(dataset_id, "dataset_id")
        if not self.store.remove(uuid):
            raise self._unknown(uuid)
        self._read.pop(uuid, None)

    async def list_datasets(self) -> list[DatasetInfo]:
        return [
            DatasetInfo(uuid=s.uuid, dataset=s.dataset, row_count=s.row_count, created_at=s.created_at)
            for s in self.store.all()
        ]

    async def get_dataset_rows(self, dataset_id: str, start_index: int = 0, limit: int = 100) -> DatasetRows:
        # The HTTP layer checks these; an in-process caller is held to the same bounds.
        if start_index < 0:
            raise BadRequestError(f"start_index must be 0 or more, got {start_index}", param="start_index")
        if not 1 <= limit <= MAX_ROWS_PER_PAGE:
            raise BadRequestError(f"limit must be from 1 to {MAX_ROWS_PER_PAGE}, got {limit}", param="limit")
        stored = self._stored(dataset_id)
        rows = await self._current_rows(stored)
        page = rows[start_index : start_index + limit]
        end = start_index + len(page)
        return DatasetRows(rows=page, total=len(rows), next_index=end if page and end < len(rows) else None)

    # ------------------------------------------------------------------------------------------ helpers
    def _stored(self, dataset_id: str) -> StoredDataset:
        uuid = _checked_uuid(dataset_id, "dataset_id")
        stored = self.store.get(uuid)
        if stored is None:
            raise self._unknown(uuid)
        return stored

    async def _current_rows(self, stored: StoredDataset) -> list[dict[str, Any]]:
        try:
            content = await read_dataset(
                self.reader,
                stored.dataset,
                "dataset.content_url",
                max_rows=self.config.max_rows,
                known=self._read.get(stored.uuid),
            )
        except BadRequestError as exc:
            # The request was fine; the dataset's content no longer is (a file gone, or changed and now wrong).
            raise ConflictError(
                f"dataset {stored.uuid!r} can no longer be read as created: {exc.message}",
                param="dataset_id",
                code="dataset_unreadable",
                provider=self.provider_id,
            ) from None
        if content.sha256 != stored.sha256:
            log.info(
                "dataset %r changed since it was last read: %d rows now (was %d)",
                stored.uuid,
                len(content.rows),
                stored.row_count,
            )
            self.store.update_content(stored.uuid, len(content.rows), content.sha256, content.format)
        self._keep(stored.uuid, content)
        return content.rows

    def _keep(self, uuid: str, content: DatasetContent) -> None:
        self._read[uuid] = content
        self._read.move_to_end(uuid)
        while len(self._read) > CACHED_DATASETS:
            self._read.popitem(last=False)

    def _exists(self, uuid: str) -> ConflictError:
        return ConflictError(
            f"a dataset {uuid!r} exists already on provider '{self.provider_id}'; delete it first, or choose another uuid",
            param="uuid",
            code="dataset_exists",
            provider=self.provider_id,
        )

    def _unknown(self, uuid: str) -> NotFoundError:
        known = self.store.uuids()
        where = f"provider '{self.provider_id}'"
        if not known:
            message = f"no dataset {uuid!r} on {where}: it has no datasets yet (create one with /datasets/create)"
        else:
            shown = ", ".join(repr(name) for name in known[:SHOWN_IN_404])
            more = f" and {len(known) - SHOWN_IN_404} more" if len(known) > SHOWN_IN_404 else ""
            message = f"no dataset {uuid!r} on {where}; it has {len(known)} dataset(s): {shown}{more}"
        return NotFoundError(message, param="dataset_id", code="dataset_not_found", provider=self.provider_id)


def _checked_uuid(uuid: str, param: str) -> str:
    if not isinstance(uuid, str) or not 1 <= len(uuid) <= MAX_UUID_LENGTH:
        got = f"{len(uuid)} characters" if isinstance(uuid, str) else type(uuid).__name__
        raise BadRequestError(f"{param}: a dataset uuid has 1 to {MAX_UUID_LENGTH} characters, got {got}", param=param)
    return uuid


def _check_unicode(dataset: Dataset) -> None:
    """JSON may escape half of a UTF-16 surrogate pair alone (``"\\ud800"``); such a string is not text and
    could be neither stored nor answered."""
    try:
        dataset.model_dump_json()
    except PydanticSerializationError:
        raise BadRequestError(
            "dataset: holds a string with a lone UTF-16 surrogate escape (such as \\ud800), which is not text",
            param="dataset",
        ) from None


def build(config: DatasetsConfig, context: ProviderContext) -> DatasetsImpl:
    return DatasetsImpl(config, context)
