"""Provider plugins: discovery through real entry points of installed packages, and in-process plugins.

Two small packages under tests/plugins/ are pip-installed for real (offline, into a temporary --target
directory); subprocesses with that directory on PYTHONPATH see their entry points exactly as a user's
environment would after ``pip install llama-stack-echo-plugin``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from pydantic import BaseModel

from llama_stack.apis.registry import Api
from llama_stack.config import ConfigError, parse_distribution, validate_provider_configs
from llama_stack.plugins import ProviderSpec, discover_providers, hookimpl

PLUGINS = Path(__file__).resolve().parent / "plugins"
LLAMA_STACK = Path(sys.executable).with_name("llama-stack")


# --- installed packages -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the echo and broken test plugins for real into a fresh directory and return it."""
    root = tmp_path_factory.mktemp("plugin-packages")
    # Build from copies, so that build artefacts (egg-info, build/) never land in the source tree.
    sources = [shutil.copytree(PLUGINS / name, root / "src" / name) for name in ("echo", "broken")]
    site = root / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            *map(str, sources),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if pip.returncode != 0:
        pytest.fail(f"pip could not install the test plugins:\n{pip.stdout}\n{pip.stderr}")
    return site


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "250"  # rich folds table cells to the terminal width; a pipe would get 80
    env.pop("FORCE_COLOR", None)  # plain text, no escape codes, so the table can be read back
    return env


def _run(args: list[str], site: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=_env(site), capture_output=True, text=True, timeout=120, **kwargs)


def test_providers_command_lists_installed_plugins_and_names_the_broken_one(plugin_site: Path) -> None:
    result = _run([str(LLAMA_STACK), "providers"], plugin_site)

    assert result.returncode == 0, result.stderr
    rows = {cells[1]: cells for line in result.stdout.splitlines() if len(cells := line.split("\t")) == 4}
    assert rows["remote::echo"] == [
        "inference",
        "remote::echo",
        "llama-stack-echo-plugin",
        "Echoes the last user message (test plugin)",
    ]
    # The built-in provider comes through the same entry point group, from the runtime's own package.
    assert "inline::llama-cpp" in rows, result.stdout
    assert rows["inline::llama-cpp"][:3] == ["inference", "inline::llama-cpp", "llama-stack-runtime"]
    assert (
        "broken plugin: package llama-stack-broken-plugin (entry point broken): "
        "ImportError: the broken plugin's dependency is missing"
    ) in result.stderr  # piped: stdout keeps to the rows
    assert (
        "broken plugin: package llama-stack-echo-plugin (entry point no_hook): llama_stack_echo_plugin.provider "
        "implements no register_providers hook (missing @hookimpl?)"
    ) in result.stderr
    assert "conflict" not in result.stdout + result.stderr


STACK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys

    from llama_stack.client import LlamaStackClient
    from llama_stack.config import parse_distribution
    from llama_stack.plugins import discover_providers
    from llama_stack.resolver import Stack

    YAML = '''
    apis: [inference]
    providers:
      inference:
        - provider_id: echo
          provider_type: remote::echo
          config: {prefix: "echo: "}
    models:
      - {model_id: echo-model, provider_id: echo}
    storage:
      dir: ${env.STORAGE}
    '''

    async def main():
        registry = discover_providers()
        config = parse_distribution(YAML, "echo.yaml", {"STORAGE": sys.argv[1]})
        client = await LlamaStackClient.library(Stack(config, registry, source="echo.yaml"))
        async with client:
            dialog = {
                "message": {"role": "user", "content": "how are you"},
                "message_history": [
                    {"role": "user", "content": "hello there"},
                    {"role": "assistant", "content": "hi"},
                ],
            }
            answer = await client.inference.chat_completion(model="echo-model", dialog=dialog)
            chunks = await client.inference.chat_completion(model="echo-model", dialog=dialog, stream=True)
            deltas = [(c.text_delta, c.stop_reason and c.stop_reason.value) async for c in chunks]
            batch = await client.inference.batch_completion(model="echo-model", content_batch=["a", "b"])
            try:
                await client.inference.chat_completion(model="nope", dialog=dialog)
                unknown = None
            except Exception as exc:
                unknown = f"{type(exc).__name__}: {exc}"
            providers = [p.model_dump() for p in await client.list_providers()]
        print(json.dumps({
            "content": answer.content,
            "stop_reason": answer.stop_reason.value,
            "deltas": deltas,
            "batch": [r.content for r in batch],
            "unknown_model": unknown,
            "providers": providers,
            "problems": [[p.package, p.error] for p in registry.problems],
        }))

    asyncio.run(main())
    """
)


def test_installed_plugin_serves_a_distribution(plugin_site: Path, tmp_path: Path) -> None:
    result = _run([sys.executable, "-c", STACK_SCRIPT, str(tmp_path / "state")], plugin_site)

    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["content"] == "echo: how are you"
    assert out["stop_reason"] == "finished_ok"
    assert out["deltas"] == [["echo:", None], [" how", None], [" are", None], [" you", None], ["", "finished_ok"]]
    assert "".join(d for d, _ in out["deltas"]) == "echo: how are you"
    assert out["batch"] == ["echo: a", "echo: b"]
    assert out["unknown_model"].startswith("NotFoundError:") and "'nope'" in out["unknown_model"]
    assert out["providers"] == [
        {
            "api": "inference",
            "provider_id": "echo",
            "provider_type": "remote::echo",
            "package": "llama-stack-echo-plugin",
        }
    ]
    # The broken sibling package was reported, and did not keep the echo provider from serving.
    assert ["llama-stack-broken-plugin", "ImportError: the broken plugin's dependency is missing"] in out["problems"]
    assert (tmp_path / "state").is_dir()


# --- in-process plugins -------------------------------------------------------------------------------


class _Config(BaseModel):
    greeting: str = "hello"


def _plugin(name: str, *provider_types: str, fail: Exception | None = None) -> types.ModuleType:
    """A plugin module built in the test, as an application embedding the runtime would pass one."""
    module = types.ModuleType(name)

    @hookimpl
    def register_providers(register):
        for provider_type in provider_types:
            register(
                ProviderSpec(
                    api="inference", provider_type=provider_type, config_class=_Config, factory=f"{name}:build"
                )
            )
        if fail is not None:
            raise fail

    module.register_providers = register_providers
    return module


def test_in_process_plugin_registers_its_provider_type() -> None:
    registry = discover_providers(extra_plugins=[_plugin("my_app_plugin", "inline::in-process")])

    registered = registry.get(Api.inference, "inline::in-process")
    assert registered is not None
    assert registered.package == "my_app_plugin"
    assert registered.spec.config_class is _Config
    assert "inline::in-process" in registry.types_for(Api.inference)
    assert not [p for p in registry.problems if p.package == "my_app_plugin"]


def test_plugin_whose_hook_raises_is_reported_by_name_and_others_still_register() -> None:
    registry = discover_providers(
        extra_plugins=[
            _plugin("good_plugin", "inline::good"),
            _plugin("failing_plugin", "inline::half-registered", fail=RuntimeError("no licence key")),
        ]
    )

    assert registry.get(Api.inference, "inline::good") is not None
    # What the failing hook registered before raising is not kept: the plugin is out as a whole.
    assert registry.get(Api.inference, "inline::half-registered") is None
    (problem,) = [p for p in registry.problems if p.package == "failing_plugin"]
    assert problem.error == "register_providers failed: RuntimeError: no licence key"


def test_hook_registering_something_other_than_a_spec_is_reported() -> None:
    module = types.ModuleType("sloppy_plugin")
    module.register_providers = hookimpl(lambda register: register({"provider_type": "inline::dict"}))

    registry = discover_providers(extra_plugins=[module])

    (problem,) = [p for p in registry.problems if p.package == "sloppy_plugin"]
    assert "register() takes a ProviderSpec, got dict" in problem.error


def test_in_process_plugin_with_a_bad_hook_signature_is_reported() -> None:
    module = types.ModuleType("misspelt_plugin")
    module.register_providers = hookimpl(lambda reg: None)

    registry = discover_providers(extra_plugins=[module, _plugin("fine_plugin", "inline::fine")])

    (problem,) = [p for p in registry.problems if p.package == "misspelt_plugin"]
    assert "reg" in problem.error
    assert registry.get(Api.inference, "inline::fine") is not None


def test_provider_type_claimed_by_two_plugins_is_a_conflict_and_unusable() -> None:
    registry = discover_providers(
        extra_plugins=[
            _plugin("first_plugin", "remote::shared", "remote::first-only"),
            _plugin("second_plugin", "remote::shared"),
        ]
    )

    assert registry.conflicts[(Api.inference, "remote::shared")] == ["first_plugin", "second_plugin"]
    assert registry.get(Api.inference, "remote::shared") is None
    assert "remote::shared" not in registry.types_for(Api.inference)
    # The other type of the first plugin is unaffected.
    assert registry.get(Api.inference, "remote::first-only").package == "first_plugin"

    config = parse_distribution(
        "apis: [inference]\nproviders:\n  inference:\n    - {provider_id: x, provider_type: remote::shared}\n",
        "conflict.yaml",
    )
    with pytest.raises(ConfigError) as error:
        validate_provider_configs(config, registry, "conflict.yaml")
    assert "'remote::shared' is claimed by several packages (first_plugin, second_plugin)" in str(error.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"provider_type": "echo"}, "provider_type 'echo' must look like 'inline::name' or 'remote::name'"),
        (
            {"factory": "my_plugin.provider.build"},
            "factory 'my_plugin.provider.build' must look like 'package.module:callable'",
        ),
        ({"api": "inferance"}, "'inferance' is not a valid Api"),
        ({"provider_type": "cloud::x"}, "provider_type 'cloud::x' must look like"),
        ({"factory": ":build"}, "factory ':build' must look like"),
    ],
)
def test_provider_spec_rejects_malformed_declarations(fields: dict[str, str], message: str) -> None:
    arguments = {
        "api": "inference",
        "provider_type": "remote::ok",
        "config_class": _Config,
        "factory": "my_plugin.provider:build",
    }
    with pytest.raises(ValueError) as error:
        ProviderSpec(**{**arguments, **fields})
    assert message in str(error.value)


def test_unknown_provider_type_lists_the_available_ones() -> None:
    registry = discover_providers(
        extra_plugins=[_plugin("typo_plugin", "remote::available-one", "inline::available-two")]
    )
    config = parse_distribution(
        textwrap.dedent(
            """
            apis: [inference]
            providers:
              inference:
                - provider_id: mine
                  provider_type: remote::avalable-one
            """
        ),
        "typo.yaml",
    )

    with pytest.raises(ConfigError) as error:
        validate_provider_configs(config, registry, "typo.yaml")

    message = str(error.value)
    assert message.startswith("typo.yaml: invalid distribution")
    assert (
        "providers.inference[0].provider_type: unknown provider type 'remote::avalable-one' for API 'inference'"
        in message
    )
    available = message.split("(available: ", 1)[1].rstrip(")").split(", ")
    assert {"remote::available-one", "inline::available-two"} <= set(available)
