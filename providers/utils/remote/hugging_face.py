"""Recognising Hugging Face model URLs, which a preference job's ``finetuned_model`` may name."""

from __future__ import annotations

import urllib.parse

HF_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
# First path segments of huggingface.co pages that are not <org>/<model> repos.
_NOT_MODEL_REPOS = frozenset({"datasets", "spaces", "docs", "models"})


def is_hugging_face_url(url: str) -> bool:
    """Whether ``url``'s host is Hugging Face's (any scheme, any page)."""
    return urllib.parse.urlsplit(url).netloc.lower() in HF_HOSTS


def hugging_face_repo(url: str) -> tuple[str, str | None] | None:
    """(org/name, revision) for https://huggingface.co/<org>/<name>[/tree/<revision>]; None for other URLs."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not is_hugging_face_url(url):
        return None
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2 or segments[0] in _NOT_MODEL_REPOS:
        return None
    revision = segments[3] if len(segments) >= 4 and segments[2] == "tree" else None
    return f"{segments[0]}/{segments[1]}", revision
