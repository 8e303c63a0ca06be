"""`llama-stack providers` and `llama-stack distributions`: whole values whatever the output is.

Piped or redirected (CliRunner's output is not a terminal), they print tab-separated rows; --json prints
JSON; a table only on a terminal wide enough for the names. A provider type, package or file is never cut.
"""

from __future__ import annotations

import io
import json

import pytest
from pydantic import BaseModel, Field
from rich.console import Console
from typer.testing import CliRunner

from llama_stack import cli, plugins
from llama_stack.config import builtin_distributions
from llama_stack.plugins import PluginProblem, ProviderRegistry, ProviderSpec, RegisteredProvider

LONG_TYPE = "remote::an-exceptionally-long-provider-type-name-that-no-terminal-table-column-would-hold-whole"
LONG_PACKAGE = "llama-stack-plugin-with-a-package-name-long-enough-to-be-cut-by-a-table"
DESCRIPTION = "A description\twith a tab and\na line break, long enough to wrap in any table. " * 3


class LongConfig(BaseModel):
    endpoint_url_of_the_service: str = Field(description="Where the service listens.")
    retries: int = Field(default=3, description="How often a call is retried.")


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> ProviderRegistry:
    spec = ProviderSpec(
        api="inference",
        provider_type=LONG_TYPE,
        config_class=LongConfig,
        factory="nowhere:build",
        description=DESCRIPTION,
    )
    found = ProviderRegistry(
        providers={(spec.api, LONG_TYPE): RegisteredProvider(spec, LONG_PACKAGE)},
        problems=[PluginProblem("llama-stack-broken", "broken", "ImportError: missing dependency")],
    )
    monkeypatch.setattr(plugins, "discover_providers", lambda: found)
    return found


def run(*args: str) -> tuple[str, str]:
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_piped_providers_are_tab_separated_rows_with_whole_values(registry):
    out, err = run("providers")
    header, *rows = [line.split("\t") for line in out.splitlines()]
    assert header == ["API", "provider type", "package", "description"]
    assert rows == [["inference", LONG_TYPE, LONG_PACKAGE, " ".join(DESCRIPTION.split())]]
    # The notes are not rows: they go to stderr, whole.
    assert "broken plugin: package llama-stack-broken (entry point broken): ImportError: missing dependency" in err


def test_providers_as_json(registry):
    out, _ = run("providers", "--json")
    assert json.loads(out) == {
        "providers": [
            {"api": "inference", "provider_type": LONG_TYPE, "package": LONG_PACKAGE, "description": DESCRIPTION}
        ],
        "conflicts": [],
        "broken_plugins": [
            {"package": "llama-stack-broken", "plugin": "broken", "error": "ImportError: missing dependency"}
        ],
    }


def test_a_providers_config_piped_and_as_json(registry):
    out, _ = run("providers", "--config", LONG_TYPE)
    lines = out.splitlines()
    assert lines[0].startswith(f"{LONG_TYPE} (inference, from {LONG_PACKAGE}): A description with a tab")
    assert lines[1:] == [
        "field\ttype\tdefault\tdescription",
        "endpoint_url_of_the_service\tstr\t(required)\tWhere the service listens.",
        "retries\tint\t3\tHow often a call is retried.",
    ]
    (described,) = json.loads(run("providers", "--config", LONG_TYPE, "--json")[0])
    assert described["provider_type"] == LONG_TYPE and described["package"] == LONG_PACKAGE
    assert described["fields"] == [
        {
            "name": "endpoint_url_of_the_service",
            "type": "str",
            "required": True,
            "description": "Where the service listens.",
        },
        {
            "name": "retries",
            "type": "int",
            "required": False,
            "default": 3,
            "description": "How often a call is retried.",
        },
    ]


def test_piped_and_json_distributions_name_every_built_in_with_its_whole_file():
    expected = {name: str(path) for name, path in builtin_distributions().items()}
    out, _ = run("distributions")
    header, *rows = [line.split("\t") for line in out.splitlines()]
    assert header == ["name", "file", "description"]
    assert {row[0]: row[1] for row in rows} == expected
    assert all(len(row) == 3 and row[2] for row in rows)
    listed = json.loads(run("distributions", "--json")[0])
    assert {d["name"]: d["file"] for d in listed} == expected
    assert "llama.cpp" in next(d["description"] for d in listed if d["name"] == "local")


@pytest.mark.parametrize("width", [100, 300])
def test_a_terminal_gets_a_table_only_when_the_names_fit_whole(registry, monkeypatch, width):
    screen = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, force_terminal=True, width=width, color_system=None))
    monkeypatch.setattr(cli, "errors", Console(file=io.StringIO(), width=width))
    cli.providers(config=None, as_json=False)
    shown = screen.getvalue()
    assert LONG_TYPE in shown and LONG_PACKAGE in shown
    if width == 300:
        assert "┃ API" in shown and "broken plugin:" in shown  # a table, and its notes below it
    else:  # too narrow for the names whole: the rows as piped
        assert shown.splitlines()[1].split("\t")[:3] == ["inference", LONG_TYPE, LONG_PACKAGE]
