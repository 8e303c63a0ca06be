"""inline::code-shield through the stack with the real codeshield and semgrep: insecure code is a violation naming
its patterns, secure code passes, and a scan that fails or runs out of time is a violation, never a pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llama_stack.plugins import discover_providers
from llama_stack.providers.inline.shields.code_shield import fenced_blocks
from llama_stack.resolver import Stack
from llama_stack.server import create_app

INSECURE_PYTHON = """Here you go:

```python
import hashlib
import subprocess

def fingerprint(data, command):
    digest = hashlib.md5(data).hexdigest()
    subprocess.run("ls " + command, shell=True)
    return eval(digest)
```
"""
SECURE_PYTHON = """```python
import hashlib

def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
```"""


def code_provider(provider_id: str, **config: Any) -> dict[str, Any]:
    return {"provider_id": provider_id, "provider_type": "inline::code-shield", "config": config}


def distribution(directory: Path) -> Path:
    document = {
        "apis": ["safety"],
        "providers": {
            "safety": [
                code_provider("code"),
                code_provider("code-small", max_blocks=2, max_code_chars=300),
                code_provider("code-hasty", timeout_s=0.001),
                code_provider("code-broken"),
            ]
        },
        "shields": [
            {"shield_id": shield, "provider_id": shield, "shield_type": "code_guard"}
            for shield in ("code", "code-small", "code-hasty", "code-broken")
        ],
        "storage": {"dir": str(directory / "state")},
    }
    path = directory / "code.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    stack = Stack.from_distribution(distribution(tmp_path_factory.mktemp("code")), registry=discover_providers())
    await stack.start()
    yield stack
    await stack.shutdown()


@pytest.fixture(scope="module")
async def http(stack):
    transport = httpx.ASGITransport(app=create_app(stack), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def said(text: str, role: str = "assistant", **fields: Any) -> dict[str, Any]:
    return {"role": role, "content": text, **fields}


async def run_shield(http: httpx.AsyncClient, messages: list[dict[str, Any]], shield: str = "code", **params: Any):
    return await http.post(
        "/safety/run_shield",
        json={"shield_type": "code_guard", "shield_id": shield, "messages": messages, "params": params},
    )


async def violation_of(http: httpx.AsyncClient, messages: list[dict[str, Any]], shield: str = "code", **params: Any):
    response = await run_shield(http, messages, shield, **params)
    assert response.status_code == 200, response.text
    return response.json().get("violation")  # the server leaves out a null violation


async def test_insecure_python_is_a_violation_naming_each_pattern_and_line(http):
    violation = await violation_of(http, [said("Write a fingerprint function"), said(INSECURE_PYTHON)])
    assert violation is not None
    # md5 (a regular expression), shell=True (a semgrep rule), eval: each with its CWE.
    assert violation["violation_type"].split(",") == ["CWE-328", "CWE-78", "CWE-94"]
    details = violation["details"]
    assert "messages[1] code block 1 (python), line 5: CWE-328 insecure-md5-hash-usage" in details
    assert "line 6: CWE-78 insecure-subprocess-using-shell" in details
    assert "line 7: CWE-94" in details
    assert violation["suggested_user_response"]


async def test_secure_code_and_prose_pass(http):
    assert await violation_of(http, [said(SECURE_PYTHON)]) is None
    assert await violation_of(http, [said("Use hashlib.md5 for speed.")]) is None  # prose, not a code block


async def test_a_block_without_a_language_is_scanned_as_every_language(http):
    violation = await violation_of(http, [said("```\nchar name[16];\ngets(name);\n```")])
    assert violation["violation_type"] == "CWE-242"
    assert "code block 1 (no language), line 2: CWE-242 bugprone-gets" in violation["details"]


async def test_an_unclosed_block_runs_to_the_end_of_the_message(http):
    violation = await violation_of(http, [said("```python\nimport os\nos.system('rm -rf ' + path)\n")])
    assert violation is not None and "CWE-78" in violation["violation_type"]


async def test_code_interpreter_calls_are_scanned(http):
    call = {"tool_name": "code_interpreter", "arguments": {"code": "import pickle\npickle.loads(blob)\n"}}
    violation = await violation_of(http, [said("", tool_calls=[call])])
    assert violation["violation_type"] == "CWE-502"
    assert "messages[0].tool_calls[0].arguments.code, line 2" in violation["details"]


async def test_whole_messages_are_scanned_when_a_param_says_so(http):
    message = said("just run eval(user_input) and you are done", role="user")
    assert await violation_of(http, [message]) is None
    violation = await violation_of(http, [message], scan_whole_messages=True)
    assert violation is not None and "CWE-94" in violation["violation_type"]


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-c", "print('this is not a semgrep report')"],
        [sys.executable, "-c", "import sys; print('semgrep: out of memory', file=sys.stderr); sys.exit(2)"],
        [sys.executable, "-c", 'print(\'{"results": [], "errors": [], "paths": {"scanned": []}}\')'],
        ["/nonexistent/semgrep"],
    ],
    ids=["not-json", "exit-2", "scanned-nothing", "missing-binary"],
)
async def test_a_scanner_failure_is_a_violation_with_the_reason_never_a_pass(http, stack, command):
    scanner = stack.providers["code-broken"].impl.scanner
    scanner.command = command
    # Secure code: a pass here could only come from the failed scan.
    violation = await violation_of(http, [said(SECURE_PYTHON)], shield="code-broken")
    assert violation is not None
    assert violation["violation_type"] == "scan_failed"
    assert violation["details"].startswith("the code could not be scanned, so it is not passed: semgrep")


async def test_a_scan_past_its_time_is_a_violation(http):
    violation = await violation_of(http, [said(SECURE_PYTHON)], shield="code-hasty")
    assert violation["violation_type"] == "scan_failed"
    assert "took longer than 0.001s" in violation["details"]


async def test_code_over_the_bounds_is_a_violation_without_a_scan(http):
    blocks = "\n".join(f"```python\nx = {i}\n```" for i in range(3))
    violation = await violation_of(http, [said(blocks)], shield="code-small")
    assert violation["violation_type"] == "too_many_code_blocks"
    violation = await violation_of(http, [said("```python\n" + "x = 1\n" * 60 + "```")], shield="code-small")
    assert violation["violation_type"] == "code_too_long"
    assert "max_code_chars" in violation["details"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"scan_whole_messages": "yes"}, "params.scan_whole_messages"), ({"languages": ["python"]}, "params.languages")],
)
async def test_bad_params_are_a_400_naming_the_field(http, params, field):
    response = await run_shield(http, [said(SECURE_PYTHON)], **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


def test_fenced_blocks_follow_markdown():
    text = "a\n~~~ js title=x\neval(a)\n~~~\nb ```inline``` c\n````py\n```\nnested\n````\n   ```{.rust}\nlet x;\n"
    assert list(fenced_blocks(text)) == [("js", "eval(a)"), ("py", "```\nnested"), ("rust", "let x;")]


def test_importing_the_provider_needs_no_codeshield():
    """A remote-only install lists and imports the shields without codeshield; only building code-shield needs it."""
    code = (
        "import sys; sys.modules['codeshield'] = None\n"  # as if not installed: importing it raises ImportError
        "import llama_stack.providers.inline.shields.code_shield, llama_stack.providers.inline.shields.llama_guard\n"
        "from llama_stack.plugins import build_provider, discover_providers, ProviderContext\n"
        "from llama_stack.apis.registry import Api\n"
        "import asyncio, pathlib\n"
        "spec = discover_providers().get(Api.safety, 'inline::code-shield').spec\n"
        "try:\n"
        "    asyncio.run(build_provider(spec, spec.config_class(), ProviderContext('c', pathlib.Path('.'))))\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "install 'llama-stack-runtime[code-shield]'" in result.stdout, result.stdout + result.stderr
