"""Metadata filters of memory-bank queries: parsed once into a small tree that each store evaluates or compiles.

The JSON form (see ``llama_stack.apis.memory_banks.MetadataFilter``)::

    {"author": "ann", "year": {"$gte": 2020}, "$or": [{"tag": {"$in": ["a", "b"]}}, {"draft": false}]}

Keys at one level must all hold. A document lacking a key fails every operator but ``$ne`` and ``$nin``.
Comparisons ($gt $gte $lt $lte) take numbers or strings and never match a value of the other kind.
``$and`` and ``$or`` nest at most ``MAX_FILTER_DEPTH`` (16) levels deep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llama_stack.apis.errors import BadRequestError

COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
MEMBERSHIP = ("$in", "$nin")
Scalar = str | int | float | bool | None
# Filters nested deeper than any query needs are refused: stores evaluate and compile them recursively.
MAX_FILTER_DEPTH = 16


@dataclass(frozen=True)
class Compare:
    key: str
    op: str  # one of COMPARISONS or MEMBERSHIP
    value: Any  # a scalar; a list of scalars for $in / $nin


@dataclass(frozen=True)
class All:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Any_:
    parts: tuple[Filter, ...]


Filter = Compare | All | Any_


def _bad(where: str, message: str) -> BadRequestError:
    return BadRequestError(
        f"{where}: {message}", param=where, details=[{"loc": where, "in": "body", "message": message}]
    )


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def parse_filter(raw: Any, where: str = "filters", depth: int = 1) -> Filter:
    """The filter tree of a JSON filter; a 400 naming the offending path when it is malformed."""
    if not isinstance(raw, dict):
        raise _bad(where, f"a filter is a JSON object, got {type(raw).__name__}")
    if depth > MAX_FILTER_DEPTH:
        raise _bad(where, f"$and / $or nest more than {MAX_FILTER_DEPTH} levels deep")
    parts: list[Filter] = []
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _bad(at, f"{key} takes a non-empty list of filters")
            subs = tuple(parse_filter(item, f"{at}[{i}]", depth + 1) for i, item in enumerate(value))
            parts.append(All(subs) if key == "$and" else Any_(subs))
        elif key.startswith("$"):
            raise _bad(at, f"unknown operator {key!r} at the top of a filter (use $and / $or, or a metadata key)")
        elif isinstance(value, dict):
            if not value:
                raise _bad(at, "an operator object needs at least one operator")
            for op, operand in value.items():
                parts.append(_compare(key, op, operand, f"{at}.{op}"))
        elif _scalar(value):
            parts.append(Compare(key, "$eq", value))
        else:
            raise _bad(at, "expected a scalar (equality) or an object of operators")
    if not parts:
        raise _bad(where, "an empty filter matches everything; leave filters out instead")
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def _compare(key: str, op: str, operand: Any, where: str) -> Compare:
    if op in MEMBERSHIP:
        if not isinstance(operand, list) or not all(_scalar(v) for v in operand):
            raise _bad(where, f"{op} takes a list of scalars")
        return Compare(key, op, tuple(operand))
    if op not in COMPARISONS:
        raise _bad(where, f"unknown operator {op!r}; use one of {', '.join(COMPARISONS + MEMBERSHIP)}")
    if not _scalar(operand):
        raise _bad(where, f"{op} takes a scalar")
    ordering = op in ("$gt", "$gte", "$lt", "$lte")
    if ordering and (isinstance(operand, bool) or not isinstance(operand, (str, int, float))):
        raise _bad(where, f"{op} compares numbers or strings")
    return Compare(key, op, operand)


_MISSING = object()


def matches(filter_: Filter, metadata: dict[str, Any]) -> bool:
    """Whether a document's metadata satisfies the filter (the reference semantics every store follows)."""
    if isinstance(filter_, All):
        return all(matches(part, metadata) for part in filter_.parts)
    if isinstance(filter_, Any_):
        return any(matches(part, metadata) for part in filter_.parts)
    value = metadata.get(filter_.key, _MISSING)
    op, operand = filter_.op, filter_.value
    if op == "$ne":
        return value is _MISSING or not _equal(value, operand)
    if op == "$nin":
        return value is _MISSING or not any(_equal(value, item) for item in operand)
    if value is _MISSING:
        return False
    if op == "$eq":
        return _equal(value, operand)
    if op == "$in":
        return any(_equal(value, item) for item in operand)
    if not _comparable(value, operand):
        return False
    return {"$gt": value > operand, "$gte": value >= operand, "$lt": value < operand, "$lte": value <= operand}[op]


def _equal(a: Any, b: Any) -> bool:
    # JSON has one number type; True is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _comparable(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (isinstance(a, str) and isinstance(b, str))
