"""Type-checks the ``llama_stack`` package with mypy, as it is installed rather than as it is laid out on disk.

setup.py maps folders onto one namespace (stack/ is ``llama_stack``, apis/ is ``llama_stack.apis``, ...), and the
editable install resolves that mapping through an import hook that mypy cannot follow. So this script mirrors the
installed layout as a tree of symbolic links under build/typecheck (the ``mypy_path`` in pyproject.toml), rebuilt
on every run so that added or removed modules are seen, and runs mypy on it. mypy names files by the links it
read; its report is rewritten to name the files in the repository, which editors and people can open.

Arguments are passed on to mypy (for example ``--no-incremental``).
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
from pathlib import Path

from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
TOP_PACKAGE = "llama_stack"


def folder_mapping() -> dict[str, str]:
    """setup.py's FOLDERS (namespace -> folder), read without running setup.py, so the two never disagree."""
    module = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for statement in module.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "FOLDERS" for target in statement.targets
        ):
            mapping = ast.literal_eval(statement.value)
            if isinstance(mapping, dict):
                return {str(namespace): str(folder) for namespace, folder in mapping.items()}
    raise SystemExit("setup.py has no FOLDERS mapping of namespaces to folders")


def link_tree(mapping: dict[str, str]) -> dict[Path, Path]:
    """Builds the link tree; returns each linked path in it with the repository path it stands for."""
    shutil.rmtree(TREE, ignore_errors=True)
    top = TREE / TOP_PACKAGE
    top.mkdir(parents=True)
    links: dict[Path, Path] = {}
    # The top package's folder in the tree also holds the other namespaces' folders, so it is a real folder
    # with a link for each of its modules and subpackages.
    for entry in sorted((ROOT / mapping[TOP_PACKAGE]).iterdir()):
        if entry.suffix == ".py" or (entry / "__init__.py").is_file():
            links[top / entry.name] = entry
    for namespace, folder in mapping.items():
        if namespace != TOP_PACKAGE:
            link = TREE.joinpath(*namespace.split("."))
            if link in links:
                raise SystemExit(f"{namespace} is both a folder of {mapping[TOP_PACKAGE]}/ and {folder}/")
            links[link] = ROOT / folder
    for link, target in links.items():
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=target.is_dir())
    return links


def repository_paths(report: str, links: dict[Path, Path]) -> str:
    """Rewrites the link tree's paths in mypy's report into the repository's own."""
    for link, target in links.items():
        # A folder's link is matched with its separator, so that it cannot match the start of a longer name.
        suffix = os.sep if target.is_dir() else ""
        report = report.replace(f"{link.relative_to(ROOT)}{suffix}", f"{target.relative_to(ROOT)}{suffix}")
    return report


def main(arguments: list[str]) -> int:
    os.chdir(ROOT)
    links = link_tree(folder_mapping())
    stdout, stderr, status = mypy_api.run(arguments)
    sys.stdout.write(repository_paths(stdout, links))
    sys.stderr.write(repository_paths(stderr, links))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
