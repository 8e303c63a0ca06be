"""inline::code-interpreter: Python in a sandbox. Hostile code is stopped and reported, and the provider (and a
stack serving it) keeps answering the next call."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from llama_stack.apis.errors import BadRequestError, NotFoundError
from llama_stack.apis.tool_runtime import ToolInvocationRequest, ToolInvocationResult
from llama_stack.config import ConfigError
from llama_stack.plugins import ProviderContext
from llama_stack.providers.inline.code_interpreter import sandbox as sandbox_module
from llama_stack.providers.inline.code_interpreter.config import CodeInterpreterConfig
from llama_stack.providers.inline.code_interpreter.provider import CodeInterpreterToolRuntime, build
from llama_stack.resolver import Stack
from llama_stack.server import create_app

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux namespaces")

LIMITS = {"timeout_s": 3, "cpu_time_s": 2, "memory_mb": 256, "max_processes": 16, "max_output_bytes": 4096}
SECRET = "s3cr3t-" + uuid.uuid4().hex


def _userns_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    return subprocess.run([unshare, "--user", "--map-root-user", "--net", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    """A stack storage directory holding a secret the code must not read."""
    root = tmp_path_factory.mktemp("storage")
    (root / "secret.txt").write_text(SECRET)
    (root / "ci").mkdir()
    return root


@pytest.fixture(scope="module")
async def runtime(storage) -> CodeInterpreterToolRuntime:
    return await build(CodeInterpreterConfig(**LIMITS), ProviderContext("ci", storage / "ci"))


async def run(runtime: CodeInterpreterToolRuntime, code: str) -> ToolInvocationResult:
    return await runtime.invoke_tool(ToolInvocationRequest(tool_name="code_interpreter", arguments={"code": code}))


async def assert_still_serving(runtime: CodeInterpreterToolRuntime) -> None:
    after = await run(runtime, "print(6 * 7)")
    assert after.error is None and after.content == "42\n"


# ----------------------------------------------------------------------------------------------- basics
async def test_list_tools_publishes_code_interpreter_with_a_code_parameter(runtime):
    [tool] = await runtime.list_tools()
    assert tool.tool_name == "code_interpreter"
    assert tool.parameters is not None and tool.parameters["required"] == ["code"]
    assert tool.parameters["properties"]["code"]["type"] == "string"


async def test_printing_code_answers_what_it_printed(runtime):
    result = await run(runtime, "import sys\nprint('hello', sum(range(10)))\nprint('warn', file=sys.stderr)")
    assert result.error is None
    assert result.content == "hello 45\n[stderr]\nwarn\n"
    assert result.metadata["exit_code"] == 0 and result.metadata["isolation"] in ("root", "userns")


async def test_code_that_raises_reports_its_traceback_as_error(runtime):
    result = await run(runtime, "def f():\n    raise KeyError('missing')\nprint('before')\nf()")
    assert result.content.startswith("before\n")
    assert result.error is not None
    assert "Traceback (most recent call last)" in result.error and result.error.endswith("KeyError: 'missing'")


async def test_a_syntax_error_is_reported(runtime):
    result = await run(runtime, "def (:")
    assert result.error is not None and "SyntaxError" in result.error


async def test_unknown_tool_is_404_naming_it(runtime):
    with pytest.raises(NotFoundError) as missing:
        await runtime.invoke_tool(ToolInvocationRequest(tool_name="calculator", arguments={"code": "1"}))
    assert "'calculator'" in missing.value.message and missing.value.provider == "ci"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [({}, "arguments.code"), ({"code": ""}, "arguments.code"), ({"code": 3}, "arguments.code"), ({"cmd": "x"}, "cmd")],
)
async def test_missing_or_invalid_code_is_400_naming_the_field(runtime, arguments, field):
    with pytest.raises(BadRequestError) as bad:
        await runtime.invoke_tool(ToolInvocationRequest(tool_name="code_interpreter", arguments=arguments))
    assert bad.value.status == 400 and field in bad.value.message


async def test_code_over_the_size_limit_is_400_before_running(runtime):
    with pytest.raises(BadRequestError) as bad:
        await run(runtime, "#" * (runtime.config.max_code_bytes + 1))
    assert bad.value.param == "arguments.code" and "max_code_bytes" in bad.value.message


async def test_files_written_come_back_as_attachments_and_symlinks_are_not_followed(runtime):
    code = (
        "import os\n"
        "open('plot.png', 'wb').write(b'\\x89PNG fake')\n"
        "os.symlink('/etc/hostname', 'leak.txt')\n"  # resolved on the server, it would be the host's file
        "open('.hidden', 'w').write('x')\n"
    )
    result = await run(runtime, code)
    assert result.error is None
    assert [a.mime_type for a in result.attachments] == ["image/png"]
    assert base64.b64decode(result.attachments[0].url.split(",", 1)[1]) == b"\x89PNG fake"
    assert [f["name"] for f in result.metadata["files"]] == ["plot.png"]


async def test_the_environment_is_scrubbed(runtime, monkeypatch):
    monkeypatch.setenv("LLAMA_STACK_TEST_API_KEY", SECRET)
    result = await run(runtime, "import os\nprint(sorted(os.environ))\nprint(os.getcwd(), os.environ['HOME'])")
    assert SECRET not in result.content and "LLAMA_STACK_TEST_API_KEY" not in result.content
    assert result.content.splitlines()[-1] == "/sandbox /sandbox"


# ---------------------------------------------------------------------------------------------- hostile
async def test_a_socket_to_a_local_server_cannot_connect(runtime):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0)
        port = server.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # the host itself does reach it
        server.accept()[0].close()
        result = await run(runtime, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        assert result.error is not None and "OSError" in result.error
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing came through
    await assert_still_serving(runtime)


async def test_writing_outside_its_directory_fails(runtime, storage):
    outside = [f"/tmp/code-interpreter-{uuid.uuid4().hex}", str(storage / "planted.txt")]
    for path in outside:
        result = await run(runtime, f"open({path!r}, 'w').write('x')\nprint('wrote')")
        assert result.error is not None and "wrote" not in result.content
        assert not os.path.exists(path)
    await assert_still_serving(runtime)


async def test_the_servers_storage_is_out_of_reach(runtime, storage):
    code = (
        "import os\n"
        f"for path in [{str(storage / 'secret.txt')!r}, {str(storage)!r}, '/proc/1/root{storage}/secret.txt']:\n"
        "    try:\n"
        "        print(open(path).read() if path.endswith('.txt') else os.listdir(path))\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)\n"
        f"print(open({str(storage / 'secret.txt')!r}).read())\n"
    )
    result = await run(runtime, code)
    assert SECRET not in result.content and "secret.txt" not in result.content.split("Traceback")[0]
    assert result.content.count("refused") == 3
    assert result.error is not None


async def test_a_hidden_path_inside_the_mounted_installation_is_covered(storage):
    shown = Path("/usr/share")  # inside /usr, which the sandbox mounts read-only
    assert os.listdir(shown)
    config = CodeInterpreterConfig(**LIMITS, hidden_paths=[str(shown)])
    runtime = await build(config, ProviderContext("ci", storage / "ci"))
    result = await run(
        runtime, f"import os\ntry:\n    print(os.listdir({str(shown)!r}))\nexcept OSError as e:\n    print('refused')"
    )
    assert result.content in ("[]\n", "refused\n")


async def test_unbounded_allocation_is_stopped_and_reported(runtime):
    result = await run(runtime, "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))")
    assert result.error is not None and result.error.startswith("stopped: the code ran out of memory (limit 256 MiB)")
    await assert_still_serving(runtime)


async def test_a_hostile_output_size_is_truncated(runtime):
    result = await run(runtime, "import sys\nsys.stdout.write('x' * 100_000_000)")
    assert result.error is None
    assert result.metadata["stdout_bytes"] == 100_000_000
    assert len(result.content) < 5000 and result.content.startswith("x" * 4096)
    assert result.content.endswith("[stdout truncated: 99995904 more bytes not shown]")
    await assert_still_serving(runtime)


@pytest.mark.slow
async def test_a_fork_bomb_is_stopped(runtime):
    result = await run(runtime, "import os\nwhile True:\n    os.fork()")
    assert result.error is not None and result.error.startswith("stopped:")
    await assert_still_serving(runtime)
    # Nothing it forked outlives the run.
    if os.geteuid() == 0 and result.metadata["isolation"] == "root":
        leftovers = subprocess.run(["pgrep", "-u", str(runtime.config.uid_base)], capture_output=True, text=True)
        assert leftovers.stdout == ""


@pytest.mark.slow
async def test_an_endless_loop_is_stopped_by_the_cpu_limit(runtime):
    result = await run(runtime, "while True:\n    pass")
    assert result.error is not None
    assert result.error.startswith(("stopped: the code used more than 2 s of CPU time", "stopped: the code ran past"))
    await assert_still_serving(runtime)


@pytest.mark.slow
async def test_an_endless_sleep_is_stopped_by_the_wall_clock(runtime):
    result = await run(runtime, "import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.05)")
    assert result.error == "stopped: the code ran past the 3 s wall-clock limit"
    assert result.content == "started\n" and result.metadata["timed_out"] is True
    await assert_still_serving(runtime)


# ------------------------------------------------------------------------------------------- isolation
@pytest.mark.skipif(not _userns_works(), reason="user namespaces are not available here")
async def test_userns_isolation_runs_code_without_network_or_storage(storage):
    runtime = await build(CodeInterpreterConfig(**LIMITS, isolation="userns"), ProviderContext("ci", storage / "ci"))
    assert runtime.sandbox.mode == "userns"
    result = await run(runtime, f"print(open({str(storage / 'secret.txt')!r}).read())")
    assert result.error is not None and "FileNotFoundError" in result.error and SECRET not in result.content
    net = await run(runtime, "import socket\nprint([n for _, n in socket.if_nameindex()])")
    assert net.content == "['lo']\n"
    caps = await run(runtime, "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])")
    assert caps.content == "0000000000000000\n"


async def test_without_any_isolation_the_provider_refuses_to_start_unless_allowed(storage, monkeypatch):
    which = shutil.which
    monkeypatch.setattr(
        sandbox_module.shutil, "which", lambda name, *a, **k: None if name == "unshare" else which(name)
    )
    with pytest.raises(ConfigError) as refused:
        await build(CodeInterpreterConfig(**LIMITS), ProviderContext("ci", storage / "ci"))
    assert "'ci' (inline::code-interpreter)" in str(refused.value) and "allow_no_network_isolation" in str(
        refused.value
    )
    allowed = await build(
        CodeInterpreterConfig(**LIMITS, allow_no_network_isolation=True), ProviderContext("ci", storage / "ci")
    )
    assert allowed.sandbox.mode == "none"
    await assert_still_serving(allowed)


# --------------------------------------------------------------------------------------- through a stack
YAML = """
apis: [tool_runtime]
providers:
  tool_runtime:
    - provider_id: sandbox
      provider_type: inline::code-interpreter
      config: {timeout_s: 3, cpu_time_s: 2, memory_mb: 256, max_processes: 16, max_output_bytes: 4096}
storage: {dir: "${env.STORAGE}"}
"""


@pytest.fixture
async def http(tmp_path):
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "secret.txt").write_text(SECRET)
    (tmp_path / "ci.yaml").write_text(YAML)
    stack = Stack.from_distribution(tmp_path / "ci.yaml", {"STORAGE": str(tmp_path / "storage")})
    await stack.start()
    transport = httpx.ASGITransport(app=create_app(stack))
    async with httpx.AsyncClient(transport=transport, base_url="http://stack") as client:
        yield client, tmp_path / "storage"
    await stack.shutdown()


async def invoke(client: httpx.AsyncClient, code: str) -> dict:
    answer = await client.post(
        "/tool_runtime/invoke", json={"tool_name": "code_interpreter", "arguments": {"code": code}}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.slow
async def test_a_stack_keeps_serving_through_hostile_code(http):
    client, storage = http
    listed = await client.get("/tool_runtime/list")
    assert [t["tool_name"] for t in listed.json()] == ["code_interpreter"]

    hostile = {
        "storage": f"print(open({str(storage / 'secret.txt')!r}).read())",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "memory": "x = []\nwhile True:\n    x.append(bytearray(16 << 20))",
        "socket": "import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=1)",
        "output": "print('y' * 100_000_000)",
    }
    for name, code in hostile.items():
        result = await invoke(client, code)
        assert SECRET not in result["content"], name
        assert result.get("error") or result["metadata"]["stdout_bytes"] == 100_000_001, name

    # The server answers while code runs: a listing returns before a 3 s loop ends.
    looping = asyncio.ensure_future(invoke(client, "while True:\n    pass"))
    listed = await client.get("/tool_runtime/list")
    assert listed.status_code == 200 and not looping.done()
    assert (await looping)["error"].startswith("stopped:")

    unknown = await client.post("/tool_runtime/invoke", json={"tool_name": "calc", "arguments": {"code": "1"}})
    assert unknown.status_code == 404 and "calc" in unknown.json()["error"]["message"]
    missing = await client.post("/tool_runtime/invoke", json={"tool_name": "code_interpreter", "arguments": {}})
    assert missing.status_code == 400 and "arguments.code" in missing.json()["error"]["message"]
    assert (await invoke(client, "print('still here')"))["content"] == "still here\n"
