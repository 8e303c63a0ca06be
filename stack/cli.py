"""The ``llama-stack`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llama_stack.apis.errors import LlamaStackError

app = typer.Typer(help="Serve and inspect Llama Stack distributions.", no_args_is_help=True, add_completion=False)
console = Console()
errors = Console(stderr=True)
log = logging.getLogger(__name__)


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
    env: Annotated[list[str], typer.Option("--env", help="NAME=VALUE for ${env.NAME} in the YAML; repeatable.")] = [],
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
    try:
        asyncio.run(_serve(distribution, _parse_env(env), host, port, log_level, shutdown_grace))
    except KeyboardInterrupt:  # before the server's own signal handling is in place
        pass


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


@app.command()
def providers(
    config: Annotated[
        str | None, typer.Option("--config", help="Show the `config:` fields of this provider type instead.")
    ] = None,
) -> None:
    """List every discovered provider type per API, and plugins that failed to load."""
    from .plugins import discover_providers

    registry = discover_providers()
    if config is not None:
        _show_config(registry, config)
        return
    table = Table("API", "provider type", "package", "description")
    for (api, provider_type), registered in sorted(
        registry.providers.items(), key=lambda kv: (kv[0][0].value, kv[0][1])
    ):
        # Plugin-supplied text is escaped: rich would read "[...]" in it as markup.
        table.add_row(
            *(escape(cell) for cell in (api.value, provider_type, registered.package, registered.spec.description))
        )
    console.print(table)
    for (api, provider_type), packages in registry.conflicts.items():
        console.print(
            f"[yellow]conflict:[/yellow] {api.value} {escape(provider_type)} is claimed by "
            f"{escape(', '.join(packages))}; neither is usable",
            highlight=False,
        )
    for problem in registry.problems:
        console.print(
            f"[red]broken plugin:[/red] package {escape(problem.package)} "
            f"(entry point {escape(problem.plugin)}): {escape(problem.error)}",
            highlight=False,
        )


def _show_config(registry, provider_type: str) -> None:
    """The provider's config model, field by field: its declaration is the documentation."""
    matches = [r for (_, t), r in registry.providers.items() if t == provider_type]
    if not matches:
        known = ", ".join(sorted({t for _, t in registry.providers}))
        errors.print(
            f"[red]error:[/red] unknown provider type {escape(provider_type)} (known: {escape(known)})", highlight=False
        )
        raise typer.Exit(2)
    for registered in matches:
        spec = registered.spec
        console.print(
            f"{escape(spec.provider_type)} ({spec.api.value}, from {escape(registered.package)}): {escape(spec.description)}",
            highlight=False,
        )
        table = Table("field", "type", "default", "description")
        for name, field in spec.config_class.model_fields.items():
            default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
            annotation = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
            table.add_row(*(escape(str(cell)) for cell in (name, annotation, default, field.description or "")))
        console.print(table)


@app.command()
def distributions() -> None:
    """List the built-in distributions."""
    import yaml

    from .config import builtin_distributions

    table = Table("name", "description", "file")
    for name, path in sorted(builtin_distributions().items()):
        description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        table.add_row(name, description, str(path))
    console.print(table)


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
