"""A fresh clone of the repository, with nothing beside it, collects its whole suite without an error.

A user's clone has no folder of specs or anything else next to it, so whatever the tests read must be
committed inside the repository. The test clones this repository (its committed state: files left
uncommitted are not there, as they would not be for a user) into an empty temporary folder and runs
``pytest --collect-only`` there, which imports every test module, conftest and helper.

The clone's own code must be what is imported, not this checkout's, which the virtualenv has installed in
editable mode. setuptools' editable finder is appended to ``sys.meta_path``, after the regular path finder,
so a ``llama_stack`` found on ``sys.path`` wins over it. The test therefore builds, outside the clone's
folder, a small tree of symbolic links that maps the clone's folders onto ``llama_stack`` the way setup.py's
``FOLDERS`` does (read from the clone's setup.py), and puts it first on ``PYTHONPATH``. Nothing is installed.
A probe plugin records every module imported during collection and where its file lies; every
``llama_stack`` module must resolve into the clone, and no module into this checkout (outside its
virtualenv). Entry points still come from the installed metadata, but they name modules, which resolve
through the links into the clone.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COLLECT_TIMEOUT_S = 600

PROBE = '''\
"""Records, when collection ends, every imported module's file and every collected test's path."""
import json
import os
import sys


def pytest_collection_finish(session):
    modules = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
    record = {
        "modules": {name: path for name, path in modules.items() if isinstance(path, str)},
        "items": sorted({str(item.path) for item in session.items}),
    }
    with open(os.environ["FRESH_CLONE_PROBE_OUTPUT"], "w") as out:
        json.dump(record, out)
'''


def is_git_checkout(path: Path) -> bool:
    found = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return found.returncode == 0 and Path(found.stdout.strip()).resolve() == path


def setup_folders(clone: Path) -> dict[str, str]:
    """setup.py's ``FOLDERS``: import namespace -> the repository folder mapped onto it."""
    tree = ast.parse((clone / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "FOLDERS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no FOLDERS mapping to read the package layout from")


def link_tree(clone: Path, folders: dict[str, str], root: Path) -> None:
    """``root/llama_stack/...``: each namespace a link to its folder, or, when other namespaces sit inside it,
    a real directory of links to the folder's entries and to those namespaces."""
    for namespace in sorted(folders, key=lambda name: name.count(".")):
        place = root.joinpath(*namespace.split("."))
        inner = {name.rsplit(".", 1)[1] for name in folders if name.rpartition(".")[0] == namespace}
        source = clone / folders[namespace]
        if not inner:
            place.symlink_to(source, target_is_directory=True)
            continue
        place.mkdir(parents=True)
        for entry in source.iterdir():
            if entry.name not in inner:
                (place / entry.name).symlink_to(entry)


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


@pytest.mark.slow
def test_a_fresh_clone_collects_the_whole_suite(tmp_path: Path) -> None:
    if shutil.which("git") is None or not is_git_checkout(REPO):
        pytest.skip(f"{REPO} is not a git checkout: there is nothing to clone")
    empty = tmp_path / "empty"
    empty.mkdir()
    clone = empty / REPO.name
    cloned = subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], capture_output=True, text=True)
    assert cloned.returncode == 0, cloned.stderr
    assert [p.name for p in empty.iterdir()] == [REPO.name]  # nothing beside the clone

    links = tmp_path / "links"
    link_tree(clone, setup_folders(clone), links)
    (links / "fresh_clone_probe.py").write_text(PROBE)
    probe_output = tmp_path / "probe.json"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env |= {"PYTHONPATH": str(links), "FRESH_CLONE_PROBE_OUTPUT": str(probe_output)}
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "fresh_clone_probe"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=COLLECT_TIMEOUT_S,
    )
    output = collected.stdout + collected.stderr
    summary = collected.stdout.strip().splitlines()[-1] if collected.stdout.strip() else ""
    assert collected.returncode == 0 and "error" not in summary, f"the clone's suite did not collect:\n{output}"
    count = re.match(r"(\d+) tests? collected", summary)
    assert count and int(count[1]) > 0, f"nothing collected:\n{output}"

    record = json.loads(probe_output.read_text())
    clone = clone.resolve()
    # Some modules carry a made-up relative __file__ (torch.ops: "_ops.py"); only real paths say where code is.
    modules = {name: Path(path).resolve() for name, path in record["modules"].items() if Path(path).is_absolute()}
    ours = {name: path for name, path in modules.items() if name == "llama_stack" or name.startswith("llama_stack.")}
    assert "llama_stack.client" in ours, "collection imported no llama_stack module: the probe saw nothing"
    outside_clone = {name: str(path) for name, path in ours.items() if not inside(path, clone)}
    assert not outside_clone, f"llama_stack modules imported from outside the clone: {outside_clone}"
    environment = Path(sys.prefix).resolve()
    from_checkout = {
        name: str(path)
        for name, path in modules.items()
        if inside(path, REPO) and not inside(path, environment) and not inside(path, clone)
    }
    assert not from_checkout, f"modules imported from {REPO} instead of the clone: {from_checkout}"
    strays = [item for item in record["items"] if not inside(Path(item).resolve(), clone)]
    assert not strays, f"tests collected from outside the clone: {strays}"
