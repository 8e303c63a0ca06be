"""read_rows: every format a dataset comes in, every column type good and bad (the 400 names the row and the
column), the URL policy (data:, file:// inside and outside the roots, http off by default) and the bounds."""

from __future__ import annotations

import base64
import builtins
import csv
import io
import json
from typing import Any

import httpx
import pytest

from llama_stack.apis.datasets import Dataset
from llama_stack.apis.errors import BadRequestError
from llama_stack.providers.utils.datasets import DatasetReader, DatasetSourceConfig, read_dataset, read_rows

WHERE = "dataset.content_url"
DIALOG = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
ROWS = [
    {"dialog": DIALOG, "prompt": "2 + 2?", "image": "https://example.com/cat.png", "score": 0.5, "meta": {"k": [1]}},
    {
        "dialog": [{"role": "user", "content": "Hi"}],
        "prompt": "Hi",
        "image": {"url": "data:image/png;base64,AAAA", "mime_type": "image/png"},
        "score": 3,
        "meta": None,
    },
]
COLUMNS = {"dialog": "dialog", "prompt": "text", "image": "media", "score": "number", "meta": "json"}


def jsonl(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def data_url(content: bytes, mime: str = "application/jsonl") -> str:
    return f"data:{mime};base64," + base64.b64encode(content).decode()


def dataset(url: str, columns: dict[str, str] | None = None) -> Dataset:
    return Dataset(columns=COLUMNS if columns is None else columns, content_url=url)


def reader(**config: Any) -> DatasetReader:
    return DatasetReader(DatasetSourceConfig(**config), provider="datasets-test")


async def rows_of(content: bytes, mime: str = "application/jsonl", columns: dict[str, str] | None = None, **kw: Any):
    return await read_rows(reader(), dataset(data_url(content, mime), columns), WHERE, **kw)


async def refused(content: bytes, mime: str = "application/jsonl", columns: dict[str, str] | None = None, **kw) -> str:
    with pytest.raises(BadRequestError) as caught:
        await rows_of(content, mime, columns, **kw)
    assert caught.value.status == 400
    assert caught.value.message.startswith(f"{WHERE}: ")
    return caught.value.message.removeprefix(f"{WHERE}: ")


def csv_bytes(header: list[str], rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


# ------------------------------------------------------------------------------------------------ formats
async def test_json_lines_rows_come_back_as_written_with_undeclared_columns_kept():
    rows = [{**row, "extra": "kept"} for row in ROWS]
    assert await rows_of(jsonl(rows)) == rows


@pytest.mark.parametrize("shape", ["array", "rows", "data"])
async def test_json_is_an_array_of_rows_or_an_object_holding_them(shape):
    document = ROWS if shape == "array" else {shape: ROWS, "version": 2}
    pretty = json.dumps(document, indent=2).encode()
    assert await rows_of(pretty, "application/json") == ROWS
    assert await rows_of(pretty, "") == ROWS  # no mime type: told from its first character


async def test_csv_cells_become_their_columns_types():
    content = csv_bytes(
        ["dialog", "prompt", "image", "score", "meta", "note"],
        [
            [json.dumps(DIALOG), "2 + 2?", "https://example.com/cat.png", "0.5", '{"k": [1]}', "7"],
            [json.dumps(ROWS[1]["dialog"]), "Hi", json.dumps(ROWS[1]["image"]), "3", "null", ""],
        ],
    )
    rows = await rows_of(content, "text/csv")
    assert rows == [{**ROWS[0], "note": "7"}, {**ROWS[1], "note": ""}]  # undeclared columns stay text
    assert isinstance(rows[1]["score"], int) and isinstance(rows[0]["score"], float)


async def test_parquet_written_by_pyarrow_is_read_from_a_file_and_from_a_data_url(tmp_path):
    rows = [
        {"prompt": "a", "score": 1.5, "tags": ["x", "y"], "blob": b"\x00\x01", "nested": {"n": 1}},
        {"prompt": "b", "score": float("nan"), "tags": [], "blob": b"", "nested": {"n": 2}},
    ]
    content = parquet_bytes(rows)
    (tmp_path / "train.parquet").write_bytes(content)
    columns = {"prompt": "text", "tags": "json", "blob": "media", "nested": "json"}
    expected = [
        {**rows[0], "blob": "data:application/octet-stream;base64,AAE="},
        {**rows[1], "score": None, "blob": "data:application/octet-stream;base64,"},  # NaN is a missing value
    ]
    from_file = await read_rows(
        reader(file_roots=[tmp_path]), dataset((tmp_path / "train.parquet").as_uri(), columns), WHERE
    )
    assert from_file == expected
    # No mime type, no suffix: Parquet's magic bytes say what it is.
    assert await rows_of(content, "", columns) == expected
    assert "column 'score': expected a number, got null" in await refused(content, "", {"score": "number"})


async def test_the_format_comes_from_the_suffix_before_the_mime_type_and_is_sniffed_last(tmp_path):
    (tmp_path / "rows.ndjson").write_bytes(jsonl(ROWS))
    (tmp_path / "lines-named.json").write_bytes(jsonl(ROWS))  # JSON Lines often carry .json
    (tmp_path / "table.csv").write_bytes(csv_bytes(["prompt"], [["a"], ["b"]]))
    files = reader(file_roots=[tmp_path])
    for name in ("rows.ndjson", "lines-named.json"):
        assert await read_rows(files, dataset((tmp_path / name).as_uri()), WHERE) == ROWS
    table = dataset((tmp_path / "table.csv").as_uri(), {"prompt": "text"})
    assert await read_rows(files, table, WHERE) == [{"prompt": "a"}, {"prompt": "b"}]
    assert await rows_of(b"prompt\na\n", "", {"prompt": "text"}) == [{"prompt": "a"}]  # sniffed: CSV
    one_line_container = json.dumps({"rows": ROWS}).encode()
    assert await rows_of(one_line_container, "") == ROWS


async def test_read_dataset_reports_format_hash_and_reuses_a_known_read():
    url = data_url(jsonl(ROWS))
    first = await read_dataset(reader(), dataset(url), WHERE)
    assert (first.format, len(first.rows)) == ("jsonl", 2)
    again = await read_dataset(reader(), dataset(url), WHERE, known=first)
    assert again is first  # the same bytes: not parsed again
    changed = await read_dataset(reader(), dataset(data_url(jsonl(ROWS[:1]))), WHERE, known=first)
    assert changed.rows == ROWS[:1] and changed.sha256 != first.sha256


# ------------------------------------------------------------------------------------------- column types
@pytest.mark.parametrize(
    ("column_type", "value", "expected"),
    [
        ("dialog", "Hi there", "expected a list of messages ({role, content}), got a string"),
        ("dialog", [], "expected a list of messages ({role, content}), got an empty list"),
        ("dialog", [{"role": "robot", "content": "x"}], "at [0].role: Input should be"),
        ("dialog", [{"role": "user"}], "at [0].content: field required"),
        ("dialog", [{"role": "user", "content": "x", "mood": "happy"}], "at [0].mood: unknown field"),
        ("text", 42, "expected a string, got a number"),
        ("text", None, "expected a string, got null"),
        ("media", "ftp://example.com/a.png", "expected a media URL (http(s)://, file:// or data:)"),
        ("media", {"url": "https://example.com/a.png"}, "got an object that is not {url, mime_type}"),
        (
            "media",
            7,
            "expected a media URL (http(s)://, file:// or data:) or an attachment {url, mime_type}, got a number",
        ),
        ("number", True, "expected a number, got a boolean"),
        ("number", "3", "expected a number, got a string"),
        ("number", [1], "expected a number, got a list"),
    ],
)
async def test_a_value_of_the_wrong_type_is_a_400_naming_row_and_column(column_type, value, expected):
    good = {"c": {"dialog": DIALOG, "text": "t", "media": "https://x.example/a.png", "number": 1}[column_type]}
    message = await refused(jsonl([good, good, {"c": value}]), columns={"c": column_type})
    assert message.startswith("row 3, column 'c': ")
    assert expected in message


@pytest.mark.parametrize("value", [None, "text", 1.5, [1, {"a": []}], {"deep": {"er": True}}, False])
async def test_a_json_column_takes_any_json_value(value):
    assert await rows_of(jsonl([{"c": value}]), columns={"c": "json"}) == [{"c": value}]


async def test_a_declared_column_a_row_lacks_is_named_with_the_columns_it_has():
    message = await refused(jsonl([ROWS[0], {"prompt": "x", "other": 1}]))
    assert message == "row 2, column 'dialog': missing (the row's columns: 'prompt', 'other')"


@pytest.mark.parametrize(
    ("header", "cells", "columns", "expected"),
    [
        (["score"], [["1"], ["abc"]], {"score": "number"}, "row 2, column 'score': expected a number, got 'abc'"),
        (["score"], [["1"], [" "]], {"score": "number"}, "row 2, column 'score': expected a number, got an empty cell"),
        (["score"], [["inf"]], {"score": "number"}, "row 1, column 'score': expected a finite number"),
        (["d"], [["[{"]], {"d": "dialog"}, "row 1, column 'd': the cell's JSON text is not valid JSON"),
        (["d"], [['"hello"']], {"d": "dialog"}, "row 1, column 'd': expected a list of messages"),
        (["j"], [[""]], {"j": "json"}, "row 1, column 'j': expected a JSON value as JSON text, got an empty cell"),
        (["a", "b"], [["1", "2", "3"]], {}, "row 1 has 3 cells; the header names 2 columns"),
        (["a", "b"], [["1"]], {"b": "text"}, "row 1, column 'b': missing (the row's columns: 'a')"),
        (["a", "a"], [["1", "2"]], {}, "the CSV header names column(s) 'a' more than once"),
    ],
)
async def test_csv_problems_name_the_row_and_column(header, cells, columns, expected):
    assert (await refused(csv_bytes(header, cells), "text/csv", columns)).startswith(expected)


# ---------------------------------------------------------------------------------------- malformed data
@pytest.mark.parametrize(
    ("content", "mime", "expected"),
    [
        (b'{"a": 1}\n{"a": 2\n', "application/jsonl", "line 2: the line is not valid JSON"),
        (b'{"a": 1}\n\n[1, 2]\n', "application/jsonl", "line 3 is a JSON array, not an object"),
        (b'{"a": NaN}\n', "application/jsonl", "line 1 at a: NaN is not a number JSON allows"),
        (b"[1]", "application/json", "row 1 is a JSON int, not an object"),
        (b'{"items": []}', "application/json", "a JSON dataset is an array of row objects"),
        (b'"rows"', "application/json", "a JSON dataset is an array of row objects"),
        (b"[]", "application/json", "the dataset has no rows"),
        (b"\n\n", "application/jsonl", "the dataset has no rows"),
        (b"\xff\xfe{}", "application/jsonl", "the dataset is not UTF-8 text"),
        (b"PAR1 but not really", "", "the dataset is not a Parquet file this server can read"),
        (
            b'{"a": "x\\ud800"}\n',
            "application/jsonl",
            "line 1 at a: a \\u escape names half of a UTF-16 surrogate pair",
        ),
        (b'[{"a": "\\udc00"}]', "application/json", "a \\u escape names half of a UTF-16 surrogate pair"),
    ],
)
async def test_malformed_data_is_a_400_naming_what_is_wrong(content, mime, expected):
    assert (await refused(content, mime, {})).startswith(expected)


async def test_escaped_surrogate_pairs_are_text_and_a_lone_one_in_a_csv_cell_is_refused():
    emoji = b'{"a": "\\ud83d\\ude00"}\n'
    assert await rows_of(emoji, columns={"a": "text"}) == [{"a": "\U0001f600"}]
    cell = csv_bytes(["j"], [['{"k": "\\ud800"}']])
    assert "names half of a UTF-16 surrogate pair" in await refused(cell, "text/csv", {"j": "json"})


async def test_parquet_without_pyarrow_names_the_extra_to_install(monkeypatch):
    real_import = builtins.__import__

    def without_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "pyarrow":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    content = parquet_bytes([{"a": 1}])
    monkeypatch.setattr(builtins, "__import__", without_pyarrow)
    message = await refused(content, "", {})
    assert "install the extra llama-stack-runtime[datasets]" in message


# --------------------------------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
async def test_more_rows_than_allowed_is_a_400(fmt):
    rows = [{"n": i} for i in range(6)]
    content, mime = {
        "jsonl": (jsonl(rows), "application/jsonl"),
        "json": (json.dumps(rows).encode(), "application/json"),
        "csv": (csv_bytes(["n"], [[r["n"]] for r in rows]), "text/csv"),
        "parquet": (parquet_bytes(rows), ""),
    }[fmt]
    assert len(await rows_of(content, mime, {"n": "number"}, max_rows=6)) == 6
    assert await refused(content, mime, {"n": "number"}, max_rows=5) == (
        "the dataset holds more than 5 rows, the most this provider reads"
    )


async def test_a_dataset_over_the_byte_limit_is_a_400():
    content = jsonl(ROWS * 50)
    small = reader(max_bytes=len(content) - 1)
    with pytest.raises(BadRequestError, match=r"is larger than the \d+ bytes allowed \(datasets\.max_bytes\)"):
        await read_rows(small, dataset(data_url(content)), WHERE)


async def test_rows_nested_too_deeply_are_refused_before_they_are_parsed():
    deep = '{"a": ' + "[" * 200 + "]" * 200 + "}\n"
    message = await refused(deep.encode(), columns={})
    assert message.startswith("line 1: the line nests arrays and objects 201 levels deep")
    cell = "[" * 200 + "]" * 200
    assert "nests arrays and objects 200 levels deep" in await refused(
        csv_bytes(["j"], [[cell]]), "text/csv", {"j": "json"}
    )


async def test_a_deeply_nested_parquet_schema_is_refused():
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = pa.int64()
    value: Any = 1
    for _ in range(70):
        kind = pa.struct([("x", kind)])
        value = {"x": value}
    sink = io.BytesIO()
    pq.write_table(pa.table({"deep": pa.array([value], type=kind)}), sink)
    assert "the Parquet schema nests more than 64 levels deep" in await refused(sink.getvalue(), "", {})


# ------------------------------------------------------------------------------------------ the URL policy
async def test_file_datasets_are_read_inside_the_roots_only(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "train.jsonl").write_bytes(jsonl(ROWS))
    (tmp_path / "secret.jsonl").write_bytes(jsonl(ROWS))
    (allowed / "escape.jsonl").symlink_to(tmp_path / "secret.jsonl")
    files = reader(file_roots=[allowed])

    assert await read_rows(files, dataset((allowed / "train.jsonl").as_uri()), WHERE) == ROWS
    for url in (
        (tmp_path / "secret.jsonl").as_uri(),
        f"file://{allowed}/../secret.jsonl",
        (allowed / "escape.jsonl").as_uri(),
    ):
        with pytest.raises(BadRequestError, match="is outside the folders datasets may come from"):
            await read_rows(files, dataset(url), WHERE)
    with pytest.raises(BadRequestError, match=r"file:// datasets are refused: .*no datasets\.file_roots configured"):
        await read_rows(reader(), dataset((allowed / "train.jsonl").as_uri()), WHERE)


async def test_http_datasets_are_refused_by_default_and_read_when_allowed():
    with pytest.raises(BadRequestError, match=r"remote \(http:// and https://\) dataset URLs are disabled"):
        await read_rows(reader(), dataset("https://data.example/train.jsonl"), WHERE)

    served: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        served.append(str(request.url))
        return httpx.Response(200, content=jsonl(ROWS), headers={"content-type": "application/octet-stream"})

    http = DatasetReader(
        DatasetSourceConfig(allow_http=True, allowed_hosts=["data.example"]), transport=httpx.MockTransport(serve)
    )
    assert await read_rows(http, dataset("https://data.example/train.jsonl"), WHERE) == ROWS
    assert served == ["https://data.example/train.jsonl"]


async def test_a_loopback_host_is_refused_even_with_http_allowed():
    http = DatasetReader(DatasetSourceConfig(allow_http=True))
    with pytest.raises(BadRequestError, match=r"refused to fetch http://127\.0\.0\.1:9/x\.jsonl"):
        await read_rows(http, dataset("http://127.0.0.1:9/x.jsonl"), WHERE)


def test_the_format_modules_do_not_import_pyarrow_until_parquet_is_read():
    import subprocess
    import sys

    code = (
        "import sys; import llama_stack.providers.utils.datasets, llama_stack.providers.inline.datasets.provider; "
        "print('pyarrow' in sys.modules)"
    )
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "False"
