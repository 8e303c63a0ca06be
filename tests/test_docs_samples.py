"""The README's and docs' samples run as written, so that they stay true as the code changes.

Every ```python block of README.md and docs/**/*.md is a complete script: it compiles (no top-level
``await``), holds no ``...`` placeholder, and runs for real in a subprocess. A block whose first line names a
file (``# llama_stack_echo/__init__.py``, ``# pyproject.toml``) is instead a file of its document's sample
project: the files are written into an empty folder and the project's tests run there with pytest, as the
document tells its reader to. Every ```yaml block that is a distribution (it has ``providers:``) passes the
distribution parser and its providers' config checks, and every ``llama-stack <subcommand>`` in a shell
block or an inline command names a subcommand, and options, the CLI has.

What a script needs is said by a marker, an HTML comment on the line before its block (visible in the
Markdown source, not on the rendered page); words in parentheses are for the reader:

- ``<!-- sample: server=local -->``: runs against ``llama-stack run local`` (the SmolLM2 model);
- ``<!-- sample: server=together -->``: against ``llama-stack run together`` pointed at the fake Together API
  of tests/fakes, with ``TOGETHER_API_KEY`` (the fake's key) in the sample's environment, not the server's;
- ``<!-- sample: server=openai-compat -->``: against a distribution serving ``llama-3.1-8b-instruct`` through
  ``remote::openai-compat`` from the fake OpenAI-compatible server, with ``OPENAI_COMPAT_API_KEY`` likewise;
- ``<!-- sample: slow -->``: no server, but a real model loads in the sample's own process;
- ``<!-- sample: needs NAME -->``: skipped unless ``NAME`` is set in the environment (a real vendor's key).

Samples read the server's address from ``LLAMA_STACK_URL`` (default ``http://localhost:8321``); a script
that reads it without naming a server is a failure here. Each sample runs in an empty working directory with
``LLAMA_STACK_STORAGE`` there, so nothing lands in the home directory.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from fakes.openai_compatible import API_KEY as OPENAI_COMPATIBLE_KEY
from fakes.openai_compatible import make_openai_compatible_fake
from fakes.together import API_KEY as TOGETHER_KEY
from fakes.together import make_together_fake
from fakes.vendor_server import FakeVendor
from support import REPO, serving

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SERVERS = ("local", "together", "openai-compat")
SAMPLE_TIMEOUT_S = 300

FENCE = re.compile(r"^```(?P<language>[\w-]*)[^\n]*\n(?P<text>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"^<!--\s*sample:(?P<words>.*?)-->\s*$")
FILE_LINE = re.compile(r"^# (?P<path>[\w.-]+(?:/[\w.-]+)*\.(?:py|toml|ya?ml|json|txt|cfg))(?:\s|$)")
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
# `llama-stack <word> ...` as a command (not `llama-stack-runtime`): at the start, or after a shell separator
# or environment assignments.
COMMAND = re.compile(r"(?:^|[\s;&|(])llama-stack[ \t]+(?P<rest>[^\n]*)")
INLINE_COMMAND = re.compile(r"`(?P<command>llama-stack [^`]+)`")


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown document, with the marker before it, if any."""

    document: Path
    line: int
    language: str
    text: str
    marker: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"

    @property
    def file_path(self) -> str | None:
        """The project file this block is (its first line names it), or None for a script."""
        match = FILE_LINE.match(self.text)
        return match["path"] if match else None


@dataclass(frozen=True)
class Needs:
    """What a script needs, read from its marker."""

    server: str | None = None
    slow: bool = False
    variables: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()


def marker_words(line: str) -> tuple[str, ...] | None:
    match = MARKER.match(line.strip())
    if match is None:
        return None
    return tuple(re.sub(r"\([^)]*\)", " ", match["words"]).split())


def blocks_of(document: Path) -> list[Block]:
    text = document.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append(
            Block(
                document=document,
                line=text.count("\n", 0, match.start()) + 1,
                language=match["language"].lower(),
                text=match["text"],
                marker=marker_words(before) or (),
            )
        )
    return found


def needs_of(block: Block) -> Needs:
    server, slow, variables, unknown = None, False, [], []
    words = iter(block.marker)
    for word in words:
        if word.startswith("server="):
            server = word.removeprefix("server=")
            if server not in SERVERS:
                unknown.append(word)
        elif word == "slow":
            slow = True
        elif word == "needs":
            variables.append(next(words, ""))
        else:
            unknown.append(word)
    return Needs(server, slow, tuple(variables), tuple(unknown))


ALL_BLOCKS = [block for document in DOCUMENTS for block in blocks_of(document)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.language == "python"]
SCRIPTS = [b for b in PYTHON_BLOCKS if b.file_path is None]
PROJECTS = {
    document: [b for b in ALL_BLOCKS if b.document == document and b.file_path is not None] for document in DOCUMENTS
}
PROJECTS = {document: files for document, files in PROJECTS.items() if files}


def script_param(block: Block) -> object:
    needs = needs_of(block)
    marks = [pytest.mark.slow] if needs.server or needs.slow else []
    missing = [name for name in needs.variables if not os.environ.get(name)]
    if missing:
        marks.append(pytest.mark.skip(reason=f"the sample needs {', '.join(missing)}"))
    return pytest.param(block, id=block.name, marks=marks)


# ------------------------------------------------------------------------------------------ the servers


@dataclass
class SampleServer:
    """A server a sample runs against: its URL, what goes into the sample's environment, and the vendor fake
    behind it, if any (the sample must have reached it, within its spec)."""

    url: str
    env: dict[str, str] = field(default_factory=dict)
    fake: FakeVendor | None = None


@pytest.fixture(scope="module")
def together_sample_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleServer]:
    fake = make_together_fake().start()
    try:
        storage = tmp_path_factory.mktemp("together-samples")
        env = {**os.environ, "TOGETHER_URL": fake.url, "LLAMA_STACK_STORAGE": str(storage)}
        env.pop("TOGETHER_API_KEY", None)  # the key comes with each of the sample's requests
        with serving("together", env=env) as served:
            yield SampleServer(served.url, {"TOGETHER_API_KEY": TOGETHER_KEY}, fake)
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def openai_compat_sample_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleServer]:
    fake = make_openai_compatible_fake().start()
    try:
        directory = tmp_path_factory.mktemp("openai-compat-samples")
        distribution = {
            "apis": ["inference"],
            "providers": {
                "inference": [
                    {
                        "provider_id": "vllm",
                        "provider_type": "remote::openai-compat",
                        "config": {"url": f"{fake.url}/v1", "check_models": False},
                    }
                ]
            },
            "models": [
                {
                    "model_id": "llama-3.1-8b-instruct",
                    "provider_id": "vllm",
                    "provider_model_id": "meta-llama/Llama-3.1-8B-Instruct",
                }
            ],
            "storage": {"dir": str(directory / "state")},
        }
        path = directory / "openai-compat.yaml"
        path.write_text(yaml.safe_dump(distribution))
        env = {key: value for key, value in os.environ.items() if key != "OPENAI_COMPAT_API_KEY"}
        with serving(path, env=env) as served:
            yield SampleServer(served.url, {"OPENAI_COMPAT_API_KEY": OPENAI_COMPATIBLE_KEY}, fake)
    finally:
        fake.stop()


def sample_server(request: pytest.FixtureRequest, name: str) -> SampleServer:
    if name == "local":
        return SampleServer(request.getfixturevalue("local_server"))
    fixtures = {"together": "together_sample_server", "openai-compat": "openai_compat_sample_server"}
    return request.getfixturevalue(fixtures[name])


def bank_uuids(url: str) -> set[str]:
    """The memory banks a server holds (none when it serves no memory banks)."""
    answer = httpx.get(f"{url}/memory_banks/get", timeout=30)
    if answer.status_code != 200:
        return set()
    return {json.loads(line)["uuid"] for line in answer.text.splitlines() if line.strip()}


def drop_banks(url: str, uuids: set[str]) -> None:
    for uuid in uuids:
        httpx.delete(f"{url}/memory_banks/drop", params={"bank_uuid": uuid}, timeout=30).raise_for_status()


# -------------------------------------------------------------------------------------------- the tests


def run_python(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=SAMPLE_TIMEOUT_S
    )


def placeholders(tree: ast.AST) -> list[int]:
    """Lines holding ``...`` or the string "..." as a value: something the reader must fill in."""
    return sorted(
        {
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and (node.value is Ellipsis or node.value == "...")
        }
    )


@pytest.mark.parametrize("block", [pytest.param(b, id=b.name) for b in PYTHON_BLOCKS])
def test_a_python_sample_is_complete(block: Block) -> None:
    """Checked without running it: compiles as a module (no top-level await), no placeholders, a marker the
    runner understands, and a server named when it reads LLAMA_STACK_URL."""
    code = compile(block.text, block.name, "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
    compile(code, block.name, "exec", dont_inherit=True)  # the AST alone accepts a top-level await
    lines = placeholders(code)
    assert not lines, f"{block.name}: placeholder `...` on line(s) {lines} of the sample: write what runs"
    needs = needs_of(block)
    assert not needs.unknown, f"{block.name}: marker words the test does not know: {needs.unknown}"
    if "LLAMA_STACK_URL" in block.text and block.file_path is None:
        assert needs.server, f"{block.name} reads LLAMA_STACK_URL: say which server with <!-- sample: server=... -->"


@pytest.mark.parametrize("block", [script_param(b) for b in SCRIPTS])
def test_a_python_sample_runs(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    needs = needs_of(block)
    env = {**os.environ, "LLAMA_STACK_STORAGE": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}
    server = sample_server(request, needs.server) if needs.server else None
    if server is not None:
        env |= {"LLAMA_STACK_URL": server.url, **server.env}
        banks_before = bank_uuids(server.url)
        if server.fake is not None:
            server.fake.reset()
    (tmp_path / "sample.py").write_text(block.text)
    try:
        ran = run_python(["sample.py"], tmp_path, env)
    finally:
        if server is not None:  # the session's local server is shared: leave it as it was
            drop_banks(server.url, bank_uuids(server.url) - banks_before)
    assert ran.returncode == 0, f"{block.name} failed:\n{ran.stdout}\n{ran.stderr}"
    assert ran.stdout.strip(), f"{block.name} printed nothing: a sample shows its reader what it got"
    if server is not None and server.fake is not None:
        assert server.fake.requests, f"{block.name} never reached the fake {server.fake.name}"
        assert not server.fake.violations, "\n".join(server.fake.violations)


@pytest.mark.slow  # a pytest run in a subprocess: several seconds
@pytest.mark.parametrize("document", [pytest.param(d, id=str(d.relative_to(REPO))) for d in PROJECTS])
def test_a_documented_project_passes_its_own_tests(document: Path, tmp_path: Path) -> None:
    """The document's files, written where their first lines say, make a project whose tests pass when run
    as the document says (`PYTHONPATH=. pytest tests`)."""
    project = tmp_path / "project"
    for block in PROJECTS[document]:
        path = project / str(block.file_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text)
    tests = sorted(project.glob("tests/test_*.py"))
    assert tests, f"{document.name}: a sample project without tests/test_*.py cannot be checked"
    path = os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "PYTHONPATH": path, "LLAMA_STACK_STORAGE": str(tmp_path / "state")}
    ran = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], project, env)
    assert ran.returncode == 0, f"{document.name}'s project:\n{ran.stdout}\n{ran.stderr}"
    summary = ran.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary, ran.stdout  # an async test pytest skipped is no pass


DISTRIBUTION_BLOCKS = [
    b
    for b in ALL_BLOCKS
    if b.language == "yaml" and isinstance(raw := yaml.safe_load(b.text), dict) and "providers" in raw
]


@pytest.mark.parametrize("block", [pytest.param(b, id=b.name) for b in DISTRIBUTION_BLOCKS])
def test_a_documented_distribution_is_valid(block: Block, replay_registry: object) -> None:
    """Parsed as `llama-stack run` would (no variables set: every `${env.X:=default}` takes its default), and
    each provider's `config:` checked by its provider type."""
    from llama_stack.config import parse_distribution, validate_provider_configs

    config = parse_distribution(block.text, block.name, env={})
    validate_provider_configs(config, replay_registry, block.name)


def cli_commands() -> dict[str, dict[str, bool]]:
    """Each subcommand of `llama-stack`: its options, each with whether it takes a value."""
    import typer.main

    from llama_stack.cli import app

    group = typer.main.get_command(app)
    commands = getattr(group, "commands", {})
    return {
        name: {
            "--help": False,
            **{
                option: not getattr(p, "is_flag", False)
                for p in command.params
                if p.param_type_name == "option"
                for option in (*p.opts, *p.secondary_opts)
            },
        }
        for name, command in commands.items()
    }


def command_problems(words: str, commands: dict[str, dict[str, bool]], distributions: list[str]) -> list[str]:
    """What is wrong with `llama-stack <words>`: an unknown subcommand, option or built-in distribution."""
    name, *arguments = words.split()
    if name not in commands:
        return [f"`llama-stack {name}`: no such subcommand (there are {sorted(commands)})"]
    options, problems, positional = commands[name], [], []
    values = iter(arguments)
    for argument in values:
        if not argument.startswith("-"):
            positional.append(argument)
            continue
        option, _, inline_value = argument.partition("=")
        if option not in options:
            problems.append(f"`llama-stack {name}` takes no {option} (it takes {sorted(options)})")
        elif options[option] and not inline_value:
            next(values, None)  # the option's value
    # run's one argument: a YAML file, or the name of a built-in distribution
    unknown = [a for a in positional[:1] if not a.endswith((".yaml", ".yml")) and a not in distributions]
    if name == "run" and unknown:
        problems.append(f"`llama-stack run {unknown[0]}`: no such built-in distribution ({distributions})")
    return problems


def commands_in(document: Path) -> list[tuple[int, str]]:
    """Every `llama-stack ...` command line of the document's shell blocks and inline code: (line, the words
    after `llama-stack`, up to a comment or the next shell command)."""
    text = document.read_text()
    found: list[tuple[int, str]] = []
    for block in blocks_of(document):
        if block.language in SHELL_LANGUAGES:
            for offset, line in enumerate(block.text.splitlines(), start=1):
                found += [(block.line + offset, m["rest"]) for m in COMMAND.finditer(line.split(" #")[0])]
    for match in INLINE_COMMAND.finditer(text):
        found.append((text.count("\n", 0, match.start()) + 1, match["command"].removeprefix("llama-stack ")))
    return [(line, re.split(r"\s*(?:&&|\|\||[;|])\s*", rest)[0]) for line, rest in found]


@pytest.mark.parametrize("document", [pytest.param(d, id=str(d.relative_to(REPO))) for d in DOCUMENTS])
def test_documented_cli_commands_exist(document: Path) -> None:
    from llama_stack.config import builtin_distributions

    commands = cli_commands()
    distributions = sorted(builtin_distributions())
    problems = [
        f"line {line}: {problem}"
        for line, words in commands_in(document)
        for problem in command_problems(words, commands, distributions)
    ]
    assert not problems, f"{document.relative_to(REPO)}:\n" + "\n".join(problems)


def test_the_samples_are_found() -> None:
    """The extraction itself: the README's client sample is among the scripts, the plugin guide is a project,
    and a distribution block is found, so that a broken pattern cannot empty every list above."""
    readme_scripts = [b for b in SCRIPTS if b.document.name == "README.md"]
    assert readme_scripts and all(needs_of(b).server or needs_of(b).slow for b in readme_scripts)
    assert REPO / "docs" / "plugins.md" in PROJECTS
    assert {b.file_path for b in PROJECTS[REPO / "docs" / "plugins.md"]} >= {"tests/test_echo.py", "pyproject.toml"}
    assert any(b.document.name == "distributions.md" for b in DISTRIBUTION_BLOCKS)
