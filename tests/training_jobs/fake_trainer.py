"""A training process that follows the job-folder contract (training/spec.py) without training anything.

``python -m fake_trainer <job folder>``, as the provider runs ``training_module: fake_trainer``. It takes the
job's lock, says it runs (status.json, a metrics line, a first checkpoint), then waits until the test lets it
go on (the file ``release`` appears in the job folder) and finishes: a second checkpoint, a loss curve,
status completed. What the job's ``job_uuid`` contains changes what it does:

* ``crash``: exits with code 3 before writing any status;
* ``fail``: writes status failed, error "fake failure: the loss went to nan";
* ``stubborn``: ignores SIGTERM (a cancel must kill it);
* anything else: on SIGTERM, writes status cancelled and exits.

It writes its pid in ``fake.pid`` so that tests can look for (or kill) the process itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import zlib
from pathlib import Path

from llama_stack.providers.inline.torch.training.spec import (
    CHECKPOINT_INFO,
    CHECKPOINTS_DIR,
    LOSS_PLOT,
    METRICS_FILE,
    STATUS_FILE,
    CheckpointInfo,
    JobSpec,
    JobStatus,
    StepMetrics,
    hold_job_lock,
    now,
    write_json,
)

RELEASE = "release"
WAIT_S = 120.0  # the longest the fake waits for its release before failing (a test that forgot it)


def tiny_png() -> bytes:
    """A valid 1x1 PNG, so that the loss curve is an image a client can decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")
    )


def checkpoint(job_dir: Path, spec: JobSpec, step: int) -> None:
    folder = job_dir / CHECKPOINTS_DIR / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    kind = "full" if spec.adapter is None else "adapter"
    if spec.adapter is not None:
        (folder / "adapter_config.json").write_text(
            json.dumps(
                {
                    "peft_type": "LORA",
                    "r": spec.adapter.rank,
                    "lora_alpha": spec.adapter.alpha,
                    "use_dora": spec.adapter.kind == "dora",
                }
            )
        )
    else:
        (folder / "config.json").write_text("{}")
    info = CheckpointInfo(
        job_uuid=spec.job_uuid, step=step, epoch=0, kind=kind, algorithm=spec.algorithm, base=spec.base
    )
    write_json(folder / CHECKPOINT_INFO, info)


def main(job_dir: Path) -> int:
    hold_job_lock(job_dir)
    (job_dir / "fake.pid").write_text(str(os.getpid()))
    spec = JobSpec.model_validate_json((job_dir / "spec.json").read_text())
    print(f"fake trainer: job {spec.job_uuid}, {spec.algorithm} on {spec.base.reference}", flush=True)
    if "crash" in spec.job_uuid:
        print("fake trainer: crashing", flush=True)
        return 3
    started = now()
    status = JobStatus(
        state="running", started_at=started, updated_at=started, total_steps=2, resources={"device": "cpu"}
    )

    def stop(signum: int, frame: object) -> None:
        write_json(
            job_dir / STATUS_FILE,
            status.model_copy(update={"state": "cancelled", "updated_at": now(), "completed_at": now()}),
        )
        print("fake trainer: cancelled", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, signal.SIG_IGN if "stubborn" in spec.job_uuid else stop)
    if "fail" in spec.job_uuid:
        write_json(
            job_dir / STATUS_FILE,
            status.model_copy(
                update={"state": "failed", "error": "fake failure: the loss went to nan", "completed_at": now()}
            ),
        )
        return 1
    write_json(job_dir / STATUS_FILE, status)
    metrics = StepMetrics(step=1, epoch=0, loss=2.5, lr=1e-4, tokens=10, tokens_per_s=100.0, elapsed_s=0.1)
    with (job_dir / METRICS_FILE).open("a") as out:
        out.write(metrics.model_dump_json() + "\n")
    checkpoint(job_dir, spec, 1)
    status = status.model_copy(update={"step": 1, "updated_at": now()})
    write_json(job_dir / STATUS_FILE, status)
    print("fake trainer: step 1/2 loss 2.5", flush=True)
    deadline = time.monotonic() + WAIT_S
    while not (job_dir / RELEASE).exists():
        if time.monotonic() > deadline:
            print("fake trainer: never released", flush=True)
            return 4
        time.sleep(0.02)  # waiting on the test's go-ahead: a file that appears
    checkpoint(job_dir, spec, 2)
    (job_dir / LOSS_PLOT).write_bytes(tiny_png())
    finished = now()
    write_json(
        job_dir / STATUS_FILE,
        status.model_copy(update={"state": "completed", "step": 2, "updated_at": finished, "completed_at": finished}),
    )
    print("fake trainer: step 2/2 loss 1.5; done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
