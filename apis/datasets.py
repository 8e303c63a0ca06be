"""Datasets: registered data for training and evaluating models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import Field

from .common import URL, JsonObject, ProviderId, Schema
from .dispatch import AllProviders, ByOwner, Creates, dispatch
from .routes import webmethod

DatasetColumnType = Literal["dialog", "text", "media", "number", "json"]

# Dataset uuids are free text from clients; bounded so that no one names a dataset with a megabyte.
DatasetId = Annotated[str, Field(min_length=1, max_length=256, description="The uuid the dataset was created with.")]

# The rows route answers at most this many rows at a time.
MAX_ROWS_PER_PAGE = 1000


class Dataset(Schema):
    """Dataset to be used for training or evaluating language models."""

    columns: dict[str, DatasetColumnType]
    content_url: URL
    metadata: JsonObject = Field(default_factory=dict)


class CreateDatasetRequest(Schema):
    """Request to create a dataset."""

    uuid: DatasetId
    dataset: Dataset
    provider_id: ProviderId | None = Field(
        default=None,
        description="Extension: the provider that keeps the dataset; unset: the datasets API's first provider.",
    )


class DatasetInfo(Schema):
    """Extension: one dataset in the listing, with what its provider learnt when it read it."""

    uuid: str
    dataset: Dataset
    row_count: int | None = Field(default=None, ge=0, description="Rows the dataset held when last read.")
    created_at: datetime | None = None


class DatasetRows(Schema):
    """Extension: a page of a dataset's rows, each checked against the dataset's columns."""

    rows: list[dict[str, Any]] = Field(description="The rows from start_index on, in the dataset's order.")
    total: int = Field(ge=0, description="Rows in the whole dataset.")
    next_index: int | None = Field(
        default=None, description="start_index of the next page; null when this page holds the last row."
    )


@runtime_checkable
class Datasets(Protocol):
    @webmethod("POST", "/datasets/create")
    @dispatch(Creates(resource="dataset", field="request.uuid", provider_field="request.provider_id"))
    async def create_dataset(self, request: CreateDatasetRequest) -> None:
        """Register a dataset under a uuid (its rows are read and checked against its columns first)."""
        ...

    @webmethod("GET", "/datasets/get")
    @dispatch(ByOwner(resource="dataset", field="dataset_id"))
    async def get_dataset(self, dataset_id: DatasetId) -> Dataset:
        """Fetch a dataset by its uuid."""
        ...

    @webmethod("DELETE", "/datasets/delete")
    @dispatch(ByOwner(resource="dataset", field="dataset_id", forgets=True))
    async def delete_dataset(self, dataset_id: DatasetId) -> None:
        """Delete a dataset by its uuid."""
        ...

    @webmethod("GET", "/datasets/list")
    @dispatch(AllProviders(resource="dataset", item_field="uuid"))
    async def list_datasets(self) -> list[DatasetInfo]:
        """Extension: every dataset, with its uuid and row count."""
        ...

    @webmethod("GET", "/datasets/rows", exclude_none=False)  # next_index: null on the last page
    @dispatch(ByOwner(resource="dataset", field="dataset_id"))
    async def get_dataset_rows(
        self,
        dataset_id: DatasetId,
        start_index: Annotated[int, Field(ge=0, description="The first row answered, from 0.")] = 0,
        limit: Annotated[int, Field(ge=1, le=MAX_ROWS_PER_PAGE, description="The most rows answered.")] = 100,
    ) -> DatasetRows:
        """Extension: a page of a dataset's rows (read again from its URL and checked against its columns)."""
        ...
