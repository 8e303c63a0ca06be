"""A dataset's bytes as rows (JSON objects): JSON Lines, JSON, CSV and Parquet.

The format comes from the data when it says (Parquet's magic bytes), else from the URL's suffix, else from
the mime type it was served or written with (a data: URL's, a server's Content-Type), else from its first
character (``[``: JSON; ``{``: JSON Lines, or JSON when the first line is not a whole object; else CSV).
Every problem is a 400 naming the field and the line or row at fault; sizes are bounded before work: the
rows counted as they are read, JSON nesting measured before it is parsed, Parquet's row count and
uncompressed size read from its footer before its pages are.
"""

from __future__ import annotations

import base64
import csv
import datetime
import decimal
import io
import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from llama_stack.apis.datasets import DatasetColumnType
from llama_stack.apis.errors import BadRequestError
from llama_stack.json_input import MAX_JSON_DEPTH, load_json
from llama_stack.providers.utils.dataset_columns import CellError, from_csv_cell
from llama_stack.providers.utils.url_reader import bad_field

Format = Literal["jsonl", "json", "csv", "parquet"]

PARQUET_MAGIC = b"PAR1"
DATASETS_EXTRA = "llama-stack-runtime[datasets]"

# A row (a JSON object) may nest as deeply as a request body; a JSON document holds its rows one or two
# levels down (an array, or an object's "rows"/"data" array).
MAX_ROW_DEPTH = MAX_JSON_DEPTH
# Parquet compresses; its pages may expand to at most this many times the bytes the dataset may have.
PARQUET_EXPANSION = 16
ROW_LISTS = ("rows", "data")

SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
MIME_TYPES: dict[str, Format] = {
    "application/jsonl": "jsonl",
    "application/jsonlines": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/ndjson": "jsonl",
    "application/json": "json",
    "text/json": "json",
    "text/csv": "csv",
    "application/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
}


@dataclass(frozen=True)
class RowLimits:
    """Where the rows come from (the request field, for errors), whose they are, and how many may come."""

    where: str
    provider: str | None = None
    max_rows: int | None = None
    max_bytes: int | None = None  # the dataset's byte limit (Parquet's uncompressed pages are held to a multiple)

    def bad(self, message: str) -> BadRequestError:
        return bad_field(self.where, message, self.provider)

    def check_count(self, count: int) -> None:
        if self.max_rows is not None and count > self.max_rows:
            raise self.bad(f"the dataset holds more than {self.max_rows} rows, the most this provider reads")


def detect_format(data: bytes, url: str, mime_type: str | None) -> Format:
    if data[:4] == PARQUET_MAGIC:
        return "parquet"
    if not url.lower().startswith("data:"):
        suffix = PurePosixPath(urllib.parse.urlsplit(url).path).suffix.lower()
        if suffix in SUFFIXES:
            return SUFFIXES[suffix]
    declared = (mime_type or "").split(";")[0].strip().lower()
    if declared in MIME_TYPES:
        return MIME_TYPES[declared]
    start = data.lstrip()[:1]
    if start == b"[":
        return "json"
    if start == b"{":
        return "jsonl" if _first_line_is_an_object(data, rows_inside=False) else "json"
    return "csv"


def _first_line_is_an_object(data: bytes, *, rows_inside: bool = True) -> bool:
    """Whether the first line is a whole JSON object (so the data reads as JSON Lines). With ``rows_inside``
    False, a document of that one line holding a 'rows' or 'data' array does not count: it is a JSON dataset."""
    lines = [line for line in data.splitlines() if line.strip()]
    try:
        first = load_json(lines[0], max_depth=MAX_ROW_DEPTH + 2) if lines else None
    except BadRequestError:
        return False
    if not isinstance(first, dict):
        return False
    return rows_inside or len(lines) > 1 or not any(isinstance(first.get(key), list) for key in ROW_LISTS)


def parse_rows(
    data: bytes, fmt: Format, columns: Mapping[str, DatasetColumnType], limits: RowLimits
) -> list[dict[str, Any]]:
    """The rows of ``data`` in format ``fmt``; a CSV's declared columns are converted to their types."""
    if fmt == "parquet":
        return _parquet_rows(data, limits)
    text = _text(data, limits)
    if fmt == "csv":
        return _csv_rows(text, columns, limits)
    if fmt == "json":
        return _json_rows(text, limits)
    return _jsonl_rows(text, limits)


def _text(data: bytes, limits: RowLimits) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise limits.bad(
            f"the dataset is not UTF-8 text ({exc.reason} at byte {exc.start}); send JSON Lines, JSON, CSV or Parquet"
        ) from None


def _object_row(value: Any, name: str, limits: RowLimits) -> dict[str, Any]:
    if not isinstance(value, dict):
        kind = "array" if isinstance(value, list) else "null" if value is None else type(value).__name__
        raise limits.bad(f"{name} is a JSON {kind}, not an object (each row is a JSON object)")
    return value


def _jsonl_rows(text: str, limits: RowLimits) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue

        def refuse(message: str, path: str | None, number: int = number) -> BadRequestError:
            at = f" at {path}" if path else ""
            return limits.bad(f"line {number}{at}: {message}")

        value = load_json(line, what="the line", max_depth=MAX_ROW_DEPTH, error=refuse)
        rows.append(_object_row(value, f"line {number}", limits))
        limits.check_count(len(rows))
    return rows


def _json_rows(text: str, limits: RowLimits) -> list[dict[str, Any]]:
    def refuse(message: str, path: str | None) -> BadRequestError:
        return limits.bad(f"{message} (at {path})" if path else message)

    try:
        document = load_json(text, what="the JSON document", max_depth=MAX_ROW_DEPTH + 2, error=refuse)
    except BadRequestError:
        # JSON Lines are often named .json: read them as such when the first line is a whole object.
        if text.strip().startswith("{") and _first_line_is_an_object(text.encode()):
            return _jsonl_rows(text, limits)
        raise
    if isinstance(document, dict):
        listed = next((key for key in ROW_LISTS if isinstance(document.get(key), list)), None)
        if listed is None:
            keys = ", ".join(repr(k) for k in list(document)[:10]) or "none"
            raise limits.bad(
                "a JSON dataset is an array of row objects, or an object holding them in a 'rows' or 'data' "
                f"array; this object has no such array (its keys: {keys})"
            )
        document = document[listed]
    if not isinstance(document, list):
        raise limits.bad("a JSON dataset is an array of row objects, or an object holding them in a 'rows' array")
    limits.check_count(len(document))
    return [_object_row(value, f"row {index}", limits) for index, value in enumerate(document, 1)]


def _csv_rows(text: str, columns: Mapping[str, DatasetColumnType], limits: RowLimits) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise limits.bad("the CSV dataset is empty: it needs a header row naming its columns")
        names = [name.strip() for name in header]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise limits.bad(f"the CSV header names column(s) {', '.join(map(repr, repeated))} more than once")
        rows: list[dict[str, Any]] = []
        for cells in reader:
            if not cells:
                continue  # a blank line between rows
            number = len(rows) + 1
            if len(cells) > len(names):
                raise limits.bad(f"row {number} has {len(cells)} cells; the header names {len(names)} columns")
            row: dict[str, Any] = {}
            for name, cell in zip(names, cells, strict=False):  # a short row leaves its last columns out (missing)
                column_type = columns.get(name)
                try:
                    row[name] = cell if column_type is None else from_csv_cell(cell, column_type)
                except CellError as exc:
                    raise limits.bad(f"row {number}, column {name!r}: {exc}") from None
            rows.append(row)
            limits.check_count(len(rows))
    except csv.Error as exc:
        raise limits.bad(f"the CSV is malformed at line {reader.line_num}: {exc}") from None
    return rows


# ------------------------------------------------------------------------------------------------ Parquet
def _parquet_rows(data: bytes, limits: RowLimits) -> list[dict[str, Any]]:
    try:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError:
        raise limits.bad(
            f"the dataset is Parquet, which this server reads with pyarrow; install the extra {DATASETS_EXTRA} "
            "where the server runs, or send JSON Lines, JSON or CSV"
        ) from None
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        metadata = parquet.metadata
        limits.check_count(metadata.num_rows)
        if limits.max_bytes is not None:
            expanded = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
            if expanded > limits.max_bytes * PARQUET_EXPANSION:
                raise limits.bad(
                    f"the Parquet dataset expands to {expanded} bytes, more than {PARQUET_EXPANSION} times the "
                    f"{limits.max_bytes} bytes a dataset may have"
                )
        _check_schema_depth(parquet.schema_arrow, limits)
        table = parquet.read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise limits.bad(f"the dataset is not a Parquet file this server can read: {exc}") from None
    return [{str(k): _json_value(v) for k, v in row.items()} for row in table.to_pylist()]


def _check_schema_depth(schema: Any, limits: RowLimits) -> None:
    # Walked with a stack, not recursion: the depth is what is being checked.
    pending = [(field.type, 1) for field in schema]
    while pending:
        kind, depth = pending.pop()
        if depth > MAX_ROW_DEPTH:
            raise limits.bad(f"the Parquet schema nests more than {MAX_ROW_DEPTH} levels deep")
        pending.extend((kind.field(i).type, depth + 1) for i in range(getattr(kind, "num_fields", 0)))


def _json_value(value: Any) -> Any:
    """A value pyarrow read as one JSON can hold (the schema's depth is bounded, so recursion is too)."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # Parquet's NaN is a missing value; JSON has no NaN
    if isinstance(value, (bytes, bytearray)):
        return "data:application/octet-stream;base64," + base64.b64encode(value).decode("ascii")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    return value
