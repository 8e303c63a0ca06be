"""Job folders for inline::torch's training process, written the way the server writes them (spec.py's
models), and the process run on them as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_stack.providers.inline.torch.training.spec import (
    METRICS_FILE,
    OUTPUT_LOG,
    SPEC_FILE,
    AdapterSpec,
    BaseModelSpec,
    DataSpec,
    DPOSpec,
    JobSpec,
    JobStatus,
    LoopSpec,
    OptimizerSpec,
    read_status,
    write_json,
)

MODULE = "llama_stack.providers.inline.torch.training"
# Each process gets this many threads: two jobs' processes then share this machine's cores without thrashing.
THREADS = 1


def dialog_rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "dialog": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(count)
    ]


def preference_rows(count: int) -> list[dict[str, Any]]:
    return [
        {"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
        for i in range(count)
    ]


def spec_for(reference: str, algorithm: str = "lora", **changes: Any) -> JobSpec:
    """A small SFT job on dialogs; ``changes`` replace JobSpec fields, ``loop``/``optimizer`` dicts update those."""
    adapter = None
    if algorithm in ("lora", "dora", "qlora"):
        adapter = AdapterSpec(
            kind=algorithm, attn_modules=["q_proj", "v_proj"], mlp=False, output=False, rank=4, alpha=8
        )
    loop = LoopSpec(
        n_epochs=1,
        batch_size=4,
        shuffle=True,
        n_iters=0,
        activation_checkpointing=False,
        max_seq_len=64,
    ).model_copy(update=changes.pop("loop", {}))
    optimizer = OptimizerSpec(type="adamw", lr=1e-2, lr_min=1e-3, weight_decay=0.0).model_copy(
        update=changes.pop("optimizer", {})
    )
    values: dict[str, Any] = {
        "job_uuid": "job-test",
        "kind": "sft",
        "algorithm": algorithm,
        "base": BaseModelSpec(reference=reference),
        "adapter": adapter,
        "optimizer": optimizer,
        "loop": loop,
        "data": DataSpec(format="dialog", columns={"dialog": "dialog"}),
        "device": "cpu",
        "torch_threads": THREADS,
        **changes,
    }
    return JobSpec.model_validate(values)


def dpo_spec(reference: str, algorithm: str = "lora", dpo: DPOSpec | None = None, **changes: Any) -> JobSpec:
    """A small DPO job on preference rows (prompt, chosen, rejected): an adapter, or ``full``."""
    spec = spec_for(reference, algorithm, **changes)
    data = DataSpec(format="preference", columns={"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"})
    return spec.model_copy(
        update={
            "kind": "dpo",
            "algorithm": "full" if algorithm == "full" else "dpo",
            "dpo": dpo or DPOSpec(beta=0.1),
            "data": data,
        }
    )


def write_job(folder: Path, spec: JobSpec, rows: list[Any], validation: list[Any] | None = None) -> Path:
    """A job folder as the server leaves it: spec.json, train.jsonl (and validation.jsonl)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / spec.data.train).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    if validation is not None:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"validation": "validation.jsonl"})})
        (folder / "validation.jsonl").write_text("".join(json.dumps(row) + "\n" for row in validation))
    write_json(folder / SPEC_FILE, spec)
    return folder


@dataclass
class Finished:
    returncode: int
    seconds: float
    folder: Path

    @property
    def status(self) -> JobStatus:
        status = read_status(self.folder)
        assert status is not None, self.log
        return status

    @property
    def log(self) -> str:
        return (self.folder / OUTPUT_LOG).read_text(encoding="utf-8", errors="replace")

    @property
    def steps(self) -> list[dict[str, Any]]:
        return [line for line in metrics(self.folder) if "loss" in line]

    @property
    def validations(self) -> list[dict[str, Any]]:
        return [line for line in metrics(self.folder) if "validation_loss" in line]

    @property
    def losses(self) -> list[float]:
        return [line["loss"] for line in self.steps]


def metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def command(processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", MODULE]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "-m", MODULE]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)}


def start(folder: Path, processes: int = 1) -> subprocess.Popen[bytes]:
    """The process as the server starts it: in a process group of its own, its output in output.log."""
    with (folder / OUTPUT_LOG).open("ab") as log:
        return subprocess.Popen(
            [*command(processes), str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(),
            start_new_session=True,
        )


def run(folder: Path, processes: int = 1, timeout: float = 240) -> Finished:
    began = time.monotonic()
    process = start(folder, processes)
    try:
        returncode = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return Finished(returncode, time.monotonic() - began, folder)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
