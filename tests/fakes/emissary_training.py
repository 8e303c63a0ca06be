"""Emissary's projects, datasets, training jobs, checkpoints and testing functions, as a deterministic state
machine.

The state lives in ``fake.state["emissary_training"]``; :func:`reset` clears it. A created job is
``Pending``; a test moves it on with :func:`advance` (Pending -> Running at 50 % with checkpoint 1 ->
Testing at 100 % with checkpoint 2 -> Success, its checkpoints then scored), or ends it
with :func:`fail`. Timestamps are UNIX seconds from a per-job clock (100 s a step from 1633036800).

Choices where the spec says nothing or cannot be followed literally:

- Checkpoint 1's ``model_download_url`` is an ``s3://`` path (like the spec's ``s3:/my_model`` example),
  checkpoint 2's an ``https://`` URL, so both kinds reach the adapter.
- ``hyper_parameters`` values are ``oneOf`` string|number|integer|boolean: a whole number matches two
  branches and fails ``oneOf``, so whole numbers are reported as strings (``"3"``).
- A dataset upload over 5 MB, or to an unknown project, is the spec's 400; so is a training job naming
  an unknown dataset, base model or testing function (the create routes declare only 201 and 400).
- Cancelling a job that has already ended is a 204 that changes nothing (the route declares 204 and 404 only).
- ``base_model_option: fine-tuned`` takes the earlier training job's id as ``base_model`` and its
  ``checkpoint``; the job reports them as ``base_fine_tuned_model`` / ``base_fine_tuned_model_checkpoint``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .emissary import error_body
from .emissary_handlers import BASE_MODELS
from .vendor_server import FakeVendor, Recorded, Reply

STATE = "emissary_training"
START = 1633036800
MAX_DATASET_BYTES = 5 * 1024 * 1024
TERMINAL = ("Success", "Failed", "TimedOut", "Cancelled")

TESTING_FUNCTIONS: list[dict[str, Any]] = [
    {
        "name": "similarity_score_shared",
        "content": "def similarity_score_shared(input_text: str, expected_output: str, predicted_output: str): \n ...",
        "dependencies": ["rapidfuzz"],
    },
    {
        "name": "exact_match_shared",
        "content": "def exact_match_shared(input_text: str, expected_output: str, predicted_output: str): \n ...",
        "dependencies": [],
    },
]


@dataclass
class Training:
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    counter: int = 0

    def clear(self) -> None:
        # In place: the installed handlers hold this object.
        for store in (self.projects, self.datasets, self.jobs, self.checkpoints):
            store.clear()

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:05d}"


def state(fake: FakeVendor) -> Training:
    return fake.state.setdefault(STATE, Training())


def reset(fake: FakeVendor) -> None:
    """Forget every project, dataset and job (``FakeVendor.reset`` keeps handler state)."""
    state(fake).clear()


def add_project(fake: FakeVendor, name: str) -> str:
    """A project that already exists on the account; its id."""
    training = state(fake)
    project_id = training.next_id("ms")
    training.projects[project_id] = {"id": project_id, "name": name}
    return project_id


def job_by_name(fake: FakeVendor, name: str) -> dict[str, Any]:
    """The job created for a job_uuid (Llama Stack names the job after it)."""
    matches = [job for job in state(fake).jobs.values() if job["name"] == name]
    assert len(matches) == 1, f"{len(matches)} fake Emissary jobs are named {name!r}"
    return matches[0]


def dataset(fake: FakeVendor, dataset_id: str) -> dict[str, Any]:
    return state(fake).datasets[dataset_id]


def _tick(job: dict[str, Any]) -> int:
    job["updated_at"] += 100
    return job["updated_at"]


def _checkpoint(training: Training, job: dict[str, Any], number: int, url: str) -> None:
    training.checkpoints[job["id"]].append(
        {
            "checkpoint": number,
            "model_download_url": url,
            "test_results": {
                "general_test_result": f"s3://emissary-results/{job['id']}/{number}.json",
                "aggregated_test_result": {},
            },
            "created_at": job["updated_at"],
            "updated_at": job["updated_at"],
        }
    )


def advance(fake: FakeVendor, job_id: str) -> dict[str, Any]:
    """Move a job one step on its way; returns the job."""
    training = state(fake)
    job = training.jobs[job_id]
    status = job["status"]
    if status == "Pending":
        moment = _tick(job)
        job.update(status="Running", progress=50)
        job["training_loss"].append({"timestamp": float(moment), "loss": 1.875})
        _checkpoint(training, job, 1, f"s3://emissary-models/{job_id}/checkpoint-1")
    elif status == "Running":
        moment = _tick(job)
        job.update(status="Testing", progress=100)
        job["training_loss"].append({"timestamp": float(moment), "loss": 0.625})
        _checkpoint(training, job, 2, f"https://models.withemissary.com/{job_id}/checkpoint-2.tar.gz")
    elif status == "Testing":
        _tick(job)
        job["status"] = "Success"
        for index, checkpoint in enumerate(training.checkpoints[job_id]):
            checkpoint["test_results"]["aggregated_test_result"] = dict.fromkeys(
                job["test_functions"] or ["loss"], f"0.{7 + index}"
            )
            checkpoint["updated_at"] = job["updated_at"]
    return job


def fail(fake: FakeVendor, job_id: str, status: str = "Failed") -> None:
    job = state(fake).jobs[job_id]
    _tick(job)
    job["status"] = status


def _summary(job: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "name",
        "training_technique",
        "task_type",
        "base_model_option",
        "base_model",
        "base_fine_tuned_model",
        "base_fine_tuned_model_checkpoint",
        "train_dataset_name",
        "test_functions",
        "reward",
        "status",
        "progress",
        "created_by",
        "created_at",
        "updated_at",
    )
    return {key: job[key] for key in keys if key in job}


def _dataset_summary(training: Training, dataset_id: str) -> dict[str, Any]:
    found = training.datasets[dataset_id]
    return {key: found[key] for key in ("id", "name", "created_at", "is_uploaded")}


def _hyper_parameter(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and float(value).is_integer():
        return str(int(value))
    return value


def _detail(training: Training, job: dict[str, Any]) -> dict[str, Any]:
    detail = {key: value for key, value in _summary(job).items() if key != "train_dataset_name"}
    detail["train_dataset"] = _dataset_summary(training, job["train_dataset_id"])
    if job.get("test_dataset_id"):
        detail["test_dataset"] = _dataset_summary(training, job["test_dataset_id"])
    detail["training_loss"] = job["training_loss"]
    detail["hyper_parameters"] = {key: _hyper_parameter(value) for key, value in job["parameters"].items()}
    return detail


def _bad(message: str) -> Reply:
    return Reply(error_body(400, message), 400)


def _not_found() -> Reply:
    return Reply(error_body(404, "Not found"), 404)


def _job_in(training: Training, params: dict[str, str]) -> dict[str, Any] | None:
    job = training.jobs.get(params["training_job_id"])
    return job if job is not None and job["project_id"] == params["project_id"] else None


def _check_job_request(training: Training, project_id: str, body: dict[str, Any], grpo: bool) -> str | None:
    if project_id not in training.projects:
        return f"project {project_id} not found"
    for key in ("train_dataset_id", "test_dataset_id"):
        found = training.datasets.get(body.get(key, ""))
        if key in body and (found is None or found["project_id"] != project_id):
            return f"{key} {body[key]!r} is not a dataset of project {project_id}"
    if body.get("base_model_option") == "fine-tuned":
        earlier = training.jobs.get(body["base_model"])
        if earlier is None or earlier["status"] != "Success":
            return f"base_model {body['base_model']!r} is not a finished training job"
        if body.get("checkpoint") is not None and body["checkpoint"] not in [
            c["checkpoint"] for c in training.checkpoints[earlier["id"]]
        ]:
            return f"training job {earlier['id']} has no checkpoint {body['checkpoint']}"
    elif body["base_model"] not in [m["name"] for m in BASE_MODELS]:
        return f"base_model {body['base_model']!r} is not available"
    known = [f["name"] for f in TESTING_FUNCTIONS]
    unknown = [name for name in body.get("test_functions", []) if name not in known]
    if unknown:
        return f"unknown testing functions: {', '.join(unknown)}"
    if grpo and not set(body.get("reward", {})) <= set(body.get("test_functions", [])):
        return "every reward must name one of test_functions"
    return None


def install(fake: FakeVendor) -> None:
    training = state(fake)

    @fake.route("POST", "/v1/projects")
    def create_project(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json or {}
        project_id = training.next_id("ms")
        training.projects[project_id] = {"id": project_id, "name": body.get("name") or f"project-{project_id}"}
        return Reply(training.projects[project_id], 201)

    @fake.route("GET", "/v1/projects")
    def list_projects(request: Recorded, params: dict[str, str]) -> Any:
        return list(training.projects.values())

    @fake.route("POST", "/v1/projects/{project_id}/datasets")
    def upload(request: Recorded, params: dict[str, str]) -> Any:
        if params["project_id"] not in training.projects:
            return _bad(f"project {params['project_id']} not found")
        filename, content = request.form["file"]
        if len(content) > MAX_DATASET_BYTES:
            return _bad("File size exceeds the 5MB limit")
        dataset_id = training.next_id("ds")
        training.datasets[dataset_id] = {
            "id": dataset_id,
            "name": request.form.get("name") or filename,
            "created_at": START,
            "is_uploaded": True,
            "project_id": params["project_id"],
            "filename": filename,
            "content": content,
        }
        return Reply(_dataset_summary(training, dataset_id), 201)

    @fake.route("GET", "/v1/projects/{project_id}/datasets")
    def list_datasets(request: Recorded, params: dict[str, str]) -> Any:
        return [
            _dataset_summary(training, d)
            for d, found in training.datasets.items()
            if found["project_id"] == params["project_id"]
        ]

    def create(request: Recorded, params: dict[str, str], grpo: bool) -> Any:
        body = request.json
        problem = _check_job_request(training, params["project_id"], body, grpo)
        if problem:
            return _bad(problem)
        job_id = training.next_id("tr")
        job = {
            "id": job_id,
            "name": body.get("name", job_id),
            "training_technique": "GRPO" if grpo else "SFT",
            "task_type": body.get("task_type", "text-generation"),
            "base_model_option": body.get("base_model_option", "pre-trained"),
            "base_model": body["base_model"],
            "train_dataset_name": training.datasets[body["train_dataset_id"]]["name"],
            "test_functions": body.get("test_functions", []),
            "status": "Pending",
            "progress": 0,
            "created_by": "user-fake",
            "created_at": START,
            "updated_at": START,
            # Not in the answers' top level: what the job was created with.
            "project_id": params["project_id"],
            "train_dataset_id": body["train_dataset_id"],
            "test_dataset_id": body.get("test_dataset_id"),
            "parameters": body.get("parameters", {}),
            "training_loss": [],
        }
        if grpo:
            job["reward"] = body["reward"]
        if job["base_model_option"] == "fine-tuned":
            job["base_fine_tuned_model"] = body["base_model"]
            if body.get("checkpoint") is not None:
                job["base_fine_tuned_model_checkpoint"] = int(body["checkpoint"])
        training.jobs[job_id] = job
        training.checkpoints[job_id] = []
        return Reply(_summary(job), 201)

    @fake.route("POST", "/v1/projects/{project_id}/training-jobs")
    def create_sft(request: Recorded, params: dict[str, str]) -> Any:
        return create(request, params, grpo=False)

    @fake.route("POST", "/v1/projects/{project_id}/training-jobs/grpo")
    def create_grpo(request: Recorded, params: dict[str, str]) -> Any:
        return create(request, params, grpo=True)

    @fake.route("GET", "/v1/projects/{project_id}/training-jobs")
    def list_jobs(request: Recorded, params: dict[str, str]) -> Any:
        return [_summary(job) for job in training.jobs.values() if job["project_id"] == params["project_id"]]

    @fake.route("GET", "/v1/projects/{project_id}/training-jobs/{training_job_id}")
    def get_job(request: Recorded, params: dict[str, str]) -> Any:
        job = _job_in(training, params)
        return _detail(training, job) if job is not None else _not_found()

    @fake.route("DELETE", "/v1/projects/{project_id}/training-jobs/{training_job_id}")
    def delete_job(request: Recorded, params: dict[str, str]) -> Any:
        job = _job_in(training, params)
        if job is None:
            return _not_found()
        del training.jobs[job["id"]]
        return Reply(None, 204)

    @fake.route("POST", "/v1/projects/{project_id}/training-jobs/{training_job_id}/cancel")
    def cancel(request: Recorded, params: dict[str, str]) -> Any:
        job = _job_in(training, params)
        if job is None:
            return _not_found()
        if job["status"] not in TERMINAL:
            _tick(job)
            job["status"] = "Cancelled"
        return Reply(None, 204)

    @fake.route("GET", "/v1/projects/{project_id}/training-jobs/{training_job_id}/checkpoints")
    def checkpoints(request: Recorded, params: dict[str, str]) -> Any:
        job = _job_in(training, params)
        return training.checkpoints[job["id"]] if job is not None else _not_found()

    @fake.route("GET", "/v1/testing-functions")
    def testing_functions(request: Recorded, params: dict[str, str]) -> Any:
        return TESTING_FUNCTIONS
