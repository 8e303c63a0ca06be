"""inline::torch post-training jobs as processes, with the fake trainer (fake_trainer.py): status from start to
end, logs, artifacts, the queue, cancel, and what a server restart leaves of them."""

from __future__ import annotations

import base64
import os
import signal

import pytest
from training_jobs.jobs_support import (
    build_provider,
    inference_router,
    job_folder,
    pid_alive,
    served_models,
    sft,
    status_becomes,
    until,
    weights_folder,
)

from llama_stack.apis.errors import NotFoundError
from llama_stack.apis.post_training import CancelTrainingJobRequest, PostTrainingJobStatus
from llama_stack.providers.inline.torch.training.spec import job_is_running

RUNNING, COMPLETED, FAILED, SCHEDULED = (
    PostTrainingJobStatus.running,
    PostTrainingJobStatus.completed,
    PostTrainingJobStatus.failed,
    PostTrainingJobStatus.scheduled,
)


@pytest.fixture
def storage(tmp_path):
    return tmp_path / "state"


@pytest.fixture
def router(tmp_path):
    return inference_router(served_models(weights_folder(tmp_path / "models")))


@pytest.fixture
async def provider(storage, router):
    built = await build_provider(storage, inference=router)
    try:
        yield built
    finally:
        await built.shutdown()


def release(provider, job_uuid: str) -> None:
    """Let the fake trainer of the job finish."""
    (job_folder(provider, job_uuid) / "release").touch()


def trainer_pid(provider, job_uuid: str) -> int:
    return int((job_folder(provider, job_uuid) / "fake.pid").read_text())


async def running(provider, job_uuid: str):
    """The job's status once the fake trainer has done its first step."""
    status = await status_becomes(provider, job_uuid, RUNNING)

    async def first_step() -> bool:
        nonlocal status
        status = await provider.get_training_job_status(job_uuid)
        return bool(status.checkpoints)

    await until(first_step, 30, f"job {job_uuid}'s first checkpoint")
    return status


async def test_a_job_from_start_to_end(provider):
    await provider.supervised_fine_tune(sft("first"))
    first = await provider.get_training_job_status("first")
    # Accepted: scheduled until its process says it runs.
    assert first.status in (SCHEDULED, RUNNING) and first.scheduled_at is not None

    status = await running(provider, "first")
    assert status.started_at is not None and status.completed_at is None
    assert status.progress is not None and (status.progress.step, status.progress.total_steps) == (1, 2)
    assert [c.iters for c in status.checkpoints] == [1]
    assert status.checkpoints[0].path.startswith("file://") and status.checkpoints[0].path.endswith("/step-1")
    resources = status.resources_allocated or {}
    assert resources["processes"] == 1 and resources["device"] == "cpu" and resources["base_model"] == "tiny"
    pid = trainer_pid(provider, "first")
    assert pid_alive(pid)
    logs = await provider.get_training_job_logs("first")
    assert any("step 1/2" in line for line in logs.log_lines)

    release(provider, "first")
    done = await status_becomes(provider, "first", COMPLETED)
    assert done.completed_at is not None and done.completed_at >= done.started_at
    assert [c.iters for c in done.checkpoints] == [1, 2] and done.error is None
    artifacts = await provider.get_training_job_artifacts("first")
    assert [c.iters for c in artifacts.checkpoints] == [1, 2]
    assert artifacts.loss_curve is not None and artifacts.loss_curve.startswith("data:image/png;base64,")
    assert base64.b64decode(artifacts.loss_curve.split(",", 1)[1]).startswith(b"\x89PNG")
    assert [(j.job_uuid, j.status) for j in await provider.list_training_jobs()] == [("first", COMPLETED)]
    # Completed once status.json says so; its processes end right after.
    await until(_async(lambda: not job_is_running(job_folder(provider, "first"))), 10, "the job's processes to end")


async def test_the_job_folder_is_not_named_by_the_client(provider):
    await provider.supervised_fine_tune(sft("../../etc/passwd x"))
    folder = job_folder(provider, "../../etc/passwd x")
    assert folder.parent == provider.jobs_dir and folder.name == "000001-etc-passwd-x"
    await provider.cancel_training_job(CancelTrainingJobRequest(job_uuid="../../etc/passwd x"))


async def test_a_failing_job_says_why(provider):
    await provider.supervised_fine_tune(sft("fail-1"))
    status = await status_becomes(provider, "fail-1", FAILED)
    assert status.error == "fake failure: the loss went to nan" and status.completed_at is not None


async def test_a_crashing_process_is_failed_with_its_exit_code(provider):
    await provider.supervised_fine_tune(sft("crash-1"))
    status = await status_becomes(provider, "crash-1", FAILED)
    assert status.error == (
        "the training process ended without finishing (exit code 3); its log ends: fake trainer: crashing"
    )
    logs = await provider.get_training_job_logs("crash-1")
    assert "fake trainer: crashing" in logs.log_lines


async def test_the_logs_are_bounded(storage, router):
    provider = await build_provider(storage, inference=router, log_lines=2)
    try:
        await provider.supervised_fine_tune(sft("logs"))
        await running(provider, "logs")
        release(provider, "logs")
        await status_becomes(provider, "logs", COMPLETED)
        # status.json says completed a moment before the trainer's last line and exit.
        folder = job_folder(provider, "logs")
        await until(_async(lambda: not job_is_running(folder)), 10, "the trainer to exit")
        lines = (await provider.get_training_job_logs("logs")).log_lines
        assert lines == ["fake trainer: step 1/2 loss 2.5", "fake trainer: step 2/2 loss 1.5; done"]
    finally:
        await provider.shutdown()


async def test_jobs_wait_their_turn(provider):
    """max_concurrent_jobs is 1: the second job is scheduled, and starts when the first ends."""
    await provider.supervised_fine_tune(sft("one"))
    await running(provider, "one")
    await provider.supervised_fine_tune(sft("two"))
    await provider.supervised_fine_tune(sft("three"))
    two = await provider.get_training_job_status("two")
    assert two.status == SCHEDULED and two.started_at is None
    assert (two.resources_allocated or {})["queue_position"] == 1
    three = await provider.get_training_job_status("three")
    assert (three.resources_allocated or {})["queue_position"] == 2
    assert not (job_folder(provider, "two") / "output.log").exists()  # not started at all

    # Cancelling a waiting job takes it out of the queue.
    cancelled = await provider.cancel_training_job(CancelTrainingJobRequest(job_uuid="three"))
    assert cancelled.status == FAILED and cancelled.error is not None and "before it started" in cancelled.error
    assert cancelled.error.startswith("cancelled")

    release(provider, "one")
    await status_becomes(provider, "one", COMPLETED)
    await running(provider, "two")
    listed = {j.job_uuid: j.status for j in await provider.list_training_jobs()}
    assert listed == {"one": COMPLETED, "two": RUNNING, "three": FAILED}
    release(provider, "two")
    await status_becomes(provider, "two", COMPLETED)
    assert not (job_folder(provider, "three") / "output.log").exists()


async def test_cancel_stops_the_process(provider):
    await provider.supervised_fine_tune(sft("stop-me"))
    await running(provider, "stop-me")
    pid = trainer_pid(provider, "stop-me")
    status = await provider.cancel_training_job(CancelTrainingJobRequest(job_uuid="stop-me"))
    assert status.status == FAILED and status.error is not None and status.error.startswith("cancelled at ")
    assert [c.iters for c in status.checkpoints] == [1]  # its checkpoints so far stay
    assert not job_is_running(job_folder(provider, "stop-me"))
    await until(_async(lambda: not pid_alive(pid)), 10, "the trainer to be gone")
    # Cancelling it again answers the same.
    again = await provider.cancel_training_job(CancelTrainingJobRequest(job_uuid="stop-me"))
    assert (again.status, again.error) == (status.status, status.error)


async def test_a_process_ignoring_sigterm_is_killed(storage, router):
    provider = await build_provider(storage, inference=router, cancel_grace_s=0.5)
    try:
        await provider.supervised_fine_tune(sft("stubborn"))
        await running(provider, "stubborn")
        pid = trainer_pid(provider, "stubborn")
        status = await provider.cancel_training_job(CancelTrainingJobRequest(job_uuid="stubborn"))
        assert status.status == FAILED and status.error is not None
        assert status.error.startswith("cancelled at ") and "killed by signal 9 (SIGKILL)" in status.error
        await until(_async(lambda: not pid_alive(pid)), 10, "the trainer to be gone")
    finally:
        await provider.shutdown()


async def test_cancelling_an_ended_job_changes_nothing(provider):
    await provider.supervised_fine_tune(sft("ended"))
    await running(provider, "ended")
    release(provider, "ended")
    done = await status_becomes(provider, "ended", COMPLETED)
    after = await provider.cancel_training_job(CancelTrainingJobRequest(job_uuid="ended"))
    assert after == done


async def test_unknown_jobs_are_404(provider):
    for call in (
        provider.get_training_job_status("nope"),
        provider.get_training_job_logs("nope"),
        provider.get_training_job_artifacts("nope"),
        provider.cancel_training_job(CancelTrainingJobRequest(job_uuid="nope")),
    ):
        with pytest.raises(NotFoundError) as caught:
            await call
        assert "no post-training job 'nope'" in caught.value.message


# --------------------------------------------------------------------------------------------- restarts
async def test_a_job_outlives_its_server(storage, router):
    first = await build_provider(storage, inference=router)
    await first.supervised_fine_tune(sft("long"))
    await running(first, "long")
    pid = trainer_pid(first, "long")
    await first.shutdown()
    assert pid_alive(pid)  # a stopping server leaves its jobs running

    second = await build_provider(storage, inference=router)
    try:
        status = await second.get_training_job_status("long")
        assert status.status == RUNNING and [c.iters for c in status.checkpoints] == [1]
        release(second, "long")
        done = await status_becomes(second, "long", COMPLETED)
        assert [c.iters for c in done.checkpoints] == [1, 2]
    finally:
        await second.shutdown()


async def test_a_job_killed_while_no_server_ran_is_failed_with_the_reason(storage, router):
    first = await build_provider(storage, inference=router)
    await first.supervised_fine_tune(sft("killed"))
    await running(first, "killed")
    folder = job_folder(first, "killed")
    pid = trainer_pid(first, "killed")
    await first.shutdown()
    os.kill(pid, signal.SIGKILL)
    await until(_async(lambda: not job_is_running(folder)), 10, "the job's lock to be free")

    second = await build_provider(storage, inference=router)
    try:
        status = await second.get_training_job_status("killed")
        assert status.status == FAILED
        assert status.error == "the training process ended without finishing (killed by signal 9 (SIGKILL))"
        assert [c.iters for c in status.checkpoints] == [1]  # what it wrote stays listed
        assert status.completed_at is not None
    finally:
        await second.shutdown()


async def test_a_job_whose_whole_process_group_died_unseen(storage, router):
    first = await build_provider(storage, inference=router)
    await first.supervised_fine_tune(sft("vanished"))
    await running(first, "vanished")
    folder = job_folder(first, "vanished")
    pgid = first.store.get("vanished").details["pid"]
    await first.shutdown()
    os.killpg(pgid, signal.SIGKILL)  # the supervisor too: nobody records the exit
    await until(_async(lambda: not job_is_running(folder)), 10, "the job's lock to be free")

    second = await build_provider(storage, inference=router)
    try:
        status = await second.get_training_job_status("vanished")
        assert status.status == FAILED
        assert status.error == (
            "the training process ended without finishing (gone after a server restart, its exit not recorded)"
        )
    finally:
        await second.shutdown()


async def test_the_queue_survives_a_restart(storage, router):
    first = await build_provider(storage, inference=router)
    await first.supervised_fine_tune(sft("running"))
    await running(first, "running")
    await first.supervised_fine_tune(sft("waiting"))
    await first.shutdown()

    second = await build_provider(storage, inference=router)
    try:
        assert (await second.get_training_job_status("waiting")).status == SCHEDULED
        release(second, "running")
        await status_becomes(second, "running", COMPLETED)
        await running(second, "waiting")  # the new server started it when the adopted job ended
        release(second, "waiting")
        await status_becomes(second, "waiting", COMPLETED)
    finally:
        await second.shutdown()


async def test_a_job_being_started_when_the_server_died_starts_once(storage, router):
    """A job the store says was being started, with no process: the next server starts it (once)."""
    first = await build_provider(storage, inference=router, max_concurrent_jobs=1)
    await first.supervised_fine_tune(sft("blocker"))
    await running(first, "blocker")
    await first.supervised_fine_tune(sft("half-started"))
    # As if the server had died between recording the launch and starting the process.
    first.store.update("half-started", state="launching")
    blocker = job_folder(first, "blocker")
    release(first, "blocker")
    await first.shutdown()
    await until(_async(lambda: not job_is_running(blocker)), 10, "the blocker to end")

    second = await build_provider(storage, inference=router)
    try:
        await running(second, "half-started")
        assert (job_folder(second, "half-started") / "output.log").read_text().count("[server] starting") == 1
        release(second, "half-started")
        await status_becomes(second, "half-started", COMPLETED)
    finally:
        await second.shutdown()


def _async(check):
    async def condition() -> bool:
        return check()

    return condition
