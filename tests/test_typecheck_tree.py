"""tools/typecheck.py: mypy reads the package through a link tree shaped like the installed namespace, and its
report names the repository's own files."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_typecheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("typecheck", ROOT / "tools" / "typecheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tree_maps_every_folder_as_setup_py_does():
    typecheck = load_typecheck()
    mapping = typecheck.folder_mapping()
    assert mapping["llama_stack"] == "stack" and mapping["llama_stack.apis"] == "apis"
    typecheck.link_tree(mapping)
    tree = typecheck.TREE
    assert (tree / "llama_stack" / "openai_compat.py").resolve() == ROOT / "stack" / "openai_compat.py"
    assert (tree / "llama_stack" / "apis" / "inference.py").resolve() == ROOT / "apis" / "inference.py"
    assert (tree / "llama_stack" / "providers" / "utils" / "url_reader.py").resolve() == (
        ROOT / "providers" / "utils" / "url_reader.py"
    )


def test_the_report_names_the_repository_files():
    typecheck = load_typecheck()
    links = typecheck.link_tree(typecheck.folder_mapping())
    report = (
        "build/typecheck/llama_stack/apis/inference.py:3: error: x\n"
        "build/typecheck/llama_stack/openai_compat.py:7: note: y\n"
        "build/typecheck/llama_stack/providers/utils/url_reader.py:9: error: z\n"
    )
    assert typecheck.repository_paths(report, links) == (
        "apis/inference.py:3: error: x\nstack/openai_compat.py:7: note: y\nproviders/utils/url_reader.py:9: error: z\n"
    )
