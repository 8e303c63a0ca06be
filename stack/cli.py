"""The ``llama-stack`` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from llama_stack.apis.errors import LlamaStackError

if TYPE_CHECKING:
    from .plugins import ProviderRegistry, RegisteredProvider

app = typer.Typer(help="Serve and inspect Llama Stack distributions.", no_args_is_help=True, add_completion=False)
console = Console()
errors = Console(stderr=True)
log = logging.getLogger(__name__)
# The narrowest description column worth a table; a terminal narrower than that prints plain rows.
MIN_DESCRIPTION_WIDTH = 20


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--env")
        env[name] = value
    return env


@app.command()
def run(
    distribution: Annotated[
        str, typer.Argument(help="A distribution YAML file, or a built-in name (see `distributions`).")
    ] = "local",
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default: the YAML's server.port, else 8321).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: the YAML's server.host).")] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="NAME=VALUE for ${env.NAME} in the YAML; repeatable.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    shutdown_grace: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=3600,
            help="Seconds requests in flight get to finish after SIGTERM/SIGINT (default: the YAML's "
            "server.shutdown_grace_seconds, else 10).",
        ),
    ] = None,
) -> None:
    """Serve a distribution over HTTP.

    SIGTERM or SIGINT (Ctrl+C) stops it gracefully: no new connections, requests in flight get the grace
    period to finish, then the rest are ended with a 503 (a stream with an `error` event), the providers
    shut down, and the exit status is 0. A second signal ends the requests at once; a third kills the
    process without the providers' shutdown.
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):  # before the server's own signal handling is in place
        asyncio.run(_serve(distribution, _parse_env(env or []), host, port, log_level, shutdown_grace))


async def _serve(
    distribution: str,
    env: dict[str, str],
    host: str | None,
    port: int | None,
    log_level: str,
    shutdown_grace: float | None,
) -> None:
    import uvicorn

    from .plugins import discover_providers
    from .resolver import Stack
    from .server import create_app
    from .shutdown import GracefulShutdown, UvicornServer

    # The providers and models are ready before the port opens; a distribution that cannot start
    # says why in one message instead of a traceback.
    try:
        stack = Stack.from_distribution(distribution, env, discover_providers())
    except (ValueError, ImportError, OSError, LlamaStackError) as exc:  # ConfigError is a ValueError
        _start_failed(exc)
    server = stack.config.server
    shutdown = GracefulShutdown(server.shutdown_grace_seconds if shutdown_grace is None else shutdown_grace)
    with shutdown.handling_signals():
        starting = asyncio.ensure_future(stack.start())
        # A signal while the models load stops the start-up; start() shuts down what it had built.
        shutdown.on_first_signal(starting.cancel)
        try:
            await starting
        except asyncio.CancelledError:
            if shutdown.draining:
                return
            raise
        except (ValueError, ImportError, OSError, LlamaStackError) as exc:
            _start_failed(exc)
        config = uvicorn.Config(
            shutdown.wrap(create_app(stack)),
            host=host or server.host,
            port=server.port if port is None else port,
            log_level=log_level.lower(),
            lifespan="off",
            timeout_graceful_shutdown=shutdown.uvicorn_timeout,
        )
        uvicorn_server = UvicornServer(config)
        shutdown.on_first_signal(uvicorn_server.stop_listening)
        try:
            await uvicorn_server.serve()
        finally:
            log.info("shutting down the providers")
            await stack.shutdown()
            log.info("providers shut down")


def _start_failed(exc: BaseException) -> NoReturn:
    errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
    raise typer.Exit(2) from None


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (whole values, for scripts) instead of a table.")]


@app.command()
def providers(
    config: Annotated[
        str | None, typer.Option("--config", help="Show the `config:` fields of this provider type instead.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List every discovered provider type per API, and plugins that failed to load.

    A table on a terminal; tab-separated lines (a header, then one row per provider type, values whole) when
    piped or redirected, with conflicts and broken plugins on stderr; --json for scripts.
    """
    from .plugins import discover_providers

    registry = discover_providers()
    if config is not None:
        _show_config(registry, config, as_json)
        return
    rows = [
        (api.value, provider_type, registered.package, registered.spec.description)
        for (api, provider_type), registered in sorted(
            registry.providers.items(), key=lambda kv: (kv[0][0].value, kv[0][1])
        )
    ]
    conflicts = [(api.value, provider_type, packages) for (api, provider_type), packages in registry.conflicts.items()]
    if as_json:
        _print_json(
            {
                "providers": [
                    dict(zip(("api", "provider_type", "package", "description"), row, strict=True)) for row in rows
                ],
                "conflicts": [{"api": a, "provider_type": t, "packages": p} for a, t, p in conflicts],
                "broken_plugins": [
                    {"package": p.package, "plugin": p.plugin, "error": p.error} for p in registry.problems
                ],
            }
        )
        return
    _print_rows(("API", "provider type", "package", "description"), rows)
    for api, provider_type, packages in conflicts:
        _note("yellow", "conflict", f"{api} {provider_type} is claimed by {', '.join(packages)}; neither is usable")
    for problem in registry.problems:
        _note("red", "broken plugin", f"package {problem.package} (entry point {problem.plugin}): {problem.error}")


def _note(colour: str, kind: str, text: str) -> None:
    """A note below a table on a terminal; piped, stdout keeps to the rows and the note goes to stderr whole."""
    if console.is_terminal:
        console.print(f"[{colour}]{kind}:[/{colour}] {escape(text)}", highlight=False)
    else:
        print(f"{kind}: {_one_line(text)}", file=sys.stderr)


def _show_config(registry: ProviderRegistry, provider_type: str, as_json: bool) -> None:
    """The provider's config model, field by field: its declaration is the documentation."""
    matches = [r for (_, t), r in registry.providers.items() if t == provider_type]
    if not matches:
        known = ", ".join(sorted({t for _, t in registry.providers}))
        errors.print(
            f"[red]error:[/red] unknown provider type {escape(provider_type)} (known: {escape(known)})", highlight=False
        )
        raise typer.Exit(2)
    described = [_config_description(registered) for registered in matches]
    if as_json:
        _print_json(described)
        return
    for provider in described:
        heading = (
            f"{provider['provider_type']} ({provider['api']}, from {provider['package']}): {provider['description']}"
        )
        if console.is_terminal:
            console.print(escape(heading), highlight=False)
        else:
            _line(_one_line(heading))
        _print_rows(
            ("field", "type", "default", "description"),
            [
                (f["name"], f["type"], "(required)" if f["required"] else repr(f["default"]), f["description"])
                for f in provider["fields"]
            ],
        )


def _config_description(registered: RegisteredProvider) -> dict[str, Any]:
    """A provider type and its config fields (name, type, required, default, description), as plain data."""
    from pydantic_core import to_jsonable_python

    spec = registered.spec
    fields = []
    for name, field in spec.config_class.model_fields.items():
        kind = field.annotation
        annotation = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
        entry: dict[str, Any] = {"name": name, "type": annotation, "required": field.is_required()}
        if not field.is_required():
            entry["default"] = to_jsonable_python(field.get_default(call_default_factory=True), fallback=repr)
        entry["description"] = field.description or ""
        fields.append(entry)
    return {
        "provider_type": spec.provider_type,
        "api": spec.api.value,
        "package": registered.package,
        "description": spec.description,
        "fields": fields,
    }


@app.command()
def distributions(as_json: JsonOption = False) -> None:
    """List the built-in distributions: a table on a terminal, tab-separated lines when piped, or --json."""
    import yaml

    from .config import builtin_distributions

    rows = [
        (name, str(path), " ".join(str((yaml.safe_load(path.read_text()) or {}).get("description", "")).split()))
        for name, path in sorted(builtin_distributions().items())
    ]
    if as_json:
        _print_json([dict(zip(("name", "file", "description"), row, strict=True)) for row in rows])
        return
    _print_rows(("name", "file", "description"), rows)  # the description last: the column that wraps


def _print_rows(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table on a terminal wide enough for its name columns whole (the last column, the description, wraps);
    otherwise (a pipe, a file, a narrow terminal) a tab-separated header and rows, each value whole on one
    line, for grep, cut and awk."""
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(len(headers) - 1)]
    # Each column takes its cell plus 3 characters of padding and border; the description wants some room.
    if not console.is_terminal or sum(widths) + 3 * len(headers) + 1 + MIN_DESCRIPTION_WIDTH > console.width:
        for row in (headers, *rows):
            _line("\t".join(_one_line(cell) for cell in row))
        return
    columns = [Column(header, min_width=width) for header, width in zip(headers, widths, strict=False)]
    table = Table(*columns, Column(headers[-1]))
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))  # plugin text: "[...]" is not markup
    console.print(table)


def _one_line(text: str) -> str:
    """``text`` with its tabs and line breaks as single spaces: one field of one line."""
    return " ".join(text.split())


def _print_json(value: Any) -> None:
    _line(json.dumps(value, indent=2))


def _line(text: str) -> None:
    """One line of plain output, to where the console writes (stdout unless a caller redirected it)."""
    print(text, file=console.file)


@app.command()
def openapi(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file instead of stdout.")] = None,
) -> None:
    """Print the OpenAPI document of every route the server can serve."""
    from .openapi import build_openapi

    text = json.dumps(build_openapi(), indent=2)
    if output is None:
        print(text)
    else:
        output.write_text(text + "\n")


def main() -> None:
    app()
