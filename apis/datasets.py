"""Datasets: registered data for training and evaluating models."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import Field

from .common import URL, JsonObject, ProviderId, Schema
from .dispatch import ByOwner, Creates, dispatch
from .routes import webmethod

DatasetColumnType = Literal["dialog", "text", "media", "number", "json"]


class Dataset(Schema):
    """Dataset to be used for training or evaluating language models."""

    columns: dict[str, DatasetColumnType]
    content_url: URL
    metadata: JsonObject = Field(default_factory=dict)


class CreateDatasetRequest(Schema):
    """Request to create a dataset."""

    uuid: str
    dataset: Dataset
    provider_id: ProviderId | None = Field(
        default=None,
        description="Extension: the provider that keeps the dataset; unset: the datasets API's first provider.",
    )


@runtime_checkable
class Datasets(Protocol):
    @webmethod("POST", "/datasets/create")
    @dispatch(Creates(resource="dataset", field="request.uuid", provider_field="request.provider_id"))
    async def create_dataset(self, request: CreateDatasetRequest) -> None:
        """Register a dataset under a uuid."""
        ...

    @webmethod("GET", "/datasets/get")
    @dispatch(ByOwner(resource="dataset", field="dataset_id"))
    async def get_dataset(self, dataset_id: str) -> Dataset:
        """Fetch a dataset by its uuid."""
        ...

    @webmethod("DELETE", "/datasets/delete")
    @dispatch(ByOwner(resource="dataset", field="dataset_id", forgets=True))
    async def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset by its uuid."""
        ...
