"""Metadata filters: parsing with clear errors, and the reference semantics every store follows."""

from __future__ import annotations

import pytest

from llama_stack.apis.errors import BadRequestError
from llama_stack.providers.utils.memory.filters import matches, parse_filter

DOC = {"author": "ann", "year": 2021, "tags": "a", "draft": False, "score": 0.5}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"author": "ann"}, True),
        ({"author": "bob"}, False),
        ({"year": {"$gte": 2021, "$lt": 2022}}, True),
        ({"year": {"$gt": 2021}}, False),
        ({"score": {"$lte": 0.5}}, True),
        ({"tags": {"$in": ["a", "b"]}}, True),
        ({"tags": {"$nin": ["a"]}}, False),
        ({"missing": {"$ne": 1}}, True),
        ({"missing": {"$nin": [1]}}, True),
        ({"missing": 1}, False),
        ({"missing": {"$gt": 1}}, False),
        ({"draft": False}, True),
        ({"draft": 0}, False),  # a boolean is not a number
        ({"year": {"$gt": "2000"}}, False),  # a string never compares with a number
        ({"$or": [{"author": "bob"}, {"year": 2021}]}, True),
        ({"$and": [{"author": "ann"}, {"year": 2020}]}, False),
        ({"author": "ann", "$or": [{"tags": "b"}, {"draft": False}]}, True),
    ],
)
def test_semantics(raw, expected):
    assert matches(parse_filter(raw), DOC) is expected


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"year": {"$near": 1}}, "filters.year.$near"),
        ({"$not": {"a": 1}}, "filters.$not"),
        ({"$or": []}, "filters.$or"),
        ({"$or": [{"a": {"$in": 3}}]}, "filters.$or[0].a.$in"),
        ({"year": {"$gt": True}}, "filters.year.$gt"),
        ({"a": [1, 2]}, "filters.a"),
        ({}, "filters"),
    ],
)
def test_malformed_filters_are_400s_naming_the_path(raw, where):
    with pytest.raises(BadRequestError) as error:
        parse_filter(raw)
    assert error.value.param == where and error.value.message.startswith(where)
