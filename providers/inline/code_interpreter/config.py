"""Config of inline::code-interpreter: the sandbox's isolation and limits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MiB = 1024 * 1024


class CodeInterpreterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    python: str | None = Field(
        default=None,
        description=(
            "The Python interpreter that runs the code (its installation is mounted read-only in the sandbox, "
            "so its packages are importable); unset: the server's own interpreter."
        ),
    )
    isolation: Literal["auto", "root", "userns"] = Field(
        default="auto",
        description=(
            "How the sandbox is made. `root`: namespaces made by root, the code runs as a fresh unprivileged "
            "uid; `userns`: an unprivileged user namespace, the code runs without capabilities; `auto`: the "
            "first of these that works here (root first when the server runs as root)."
        ),
    )
    allow_no_network_isolation: bool = Field(
        default=False,
        description=(
            "Run code without namespaces (so with the host's network and filesystem, under resource limits "
            "only) when no isolation works here. Off: the provider refuses to start instead."
        ),
    )
    timeout_s: float = Field(default=10.0, gt=0, le=600, description="Wall-clock limit of one run.")
    cpu_time_s: int = Field(default=10, ge=1, le=600, description="CPU-time limit of each process of a run.")
    memory_mb: int = Field(
        default=1024, ge=64, le=1024 * 1024, description="Address-space limit of each process of a run, MiB."
    )
    max_processes: int = Field(
        default=16,
        ge=2,
        le=4096,
        description="Processes and threads a run may have at once (RLIMIT_NPROC of its own uid or namespace).",
    )
    max_file_size_mb: int = Field(default=16, ge=1, le=1024 * 1024, description="Largest file a run may write, MiB.")
    max_open_files: int = Field(default=64, ge=16, le=65536, description="Open file descriptors per process.")
    max_code_bytes: int = Field(default=64 * 1024, ge=1, le=16 * MiB, description="Longest code accepted, bytes.")
    max_output_bytes: int = Field(
        default=64 * 1024,
        ge=256,
        le=16 * MiB,
        description="Output kept from each of stdout and stderr; the rest is counted and dropped.",
    )
    max_attachments: int = Field(default=4, ge=0, le=64, description="Files returned as attachments per run.")
    max_attachment_bytes: int = Field(
        default=2 * MiB, ge=1, le=64 * MiB, description="Largest file returned as an attachment, bytes."
    )
    max_concurrency: int = Field(default=2, ge=1, le=256, description="Runs at once.")
    max_queued: int = Field(default=16, ge=0, le=10_000, description="Runs waiting for a slot before 503s.")
    uid_base: int = Field(
        default=200_000,
        ge=1000,
        le=2**31 - 70_000,
        description=(
            "`root` isolation: run slot i runs as uid and gid uid_base + i, so the process limit counts each run "
            "alone. Pick a range no account on this host uses."
        ),
    )
    hidden_paths: list[str] = Field(
        default_factory=list,
        description=(
            "Absolute paths covered with an empty directory in the sandbox should they lie inside the "
            "interpreter's mounted installation (the stack's storage directory always is)."
        ),
    )
