"""Handlers of the fake Emissary API for inference and deployments, answering in the spec's shapes.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings``
and the deployment routes of a project (list, create, retrieve, reactivate). Projects, datasets and
training jobs belong to ``emissary_training``; classification to ``emissary_classification``.

Behaviour (deterministic, so tests can assert exact values):

- ``model`` must be a base model of :data:`BASE_MODELS` or the name of a deployment (in any project).
  An unknown name is a 404 (``object_not_found``); a deployment that is not ``Deployed`` is a 400 saying
  its status (how a deactivated deployment answers is not in the spec; this fake picks a 400).
- Chat answers ``You said: <last message>``; a completion continues with :data:`COMPLETION_TEXT`.
  Both are cut to ``max_tokens`` / ``max_completion_tokens`` words (then ``finish_reason: "length"``,
  else ``"stop"``). Usage counts words. :func:`script_reply` queues an exact answer instead.
- Embeddings: four numbers per text (its length, its word count, its count of "a", 1.0).
- A created deployment is ``Deploying`` and becomes ``Deployed`` on the ``deploy_after_polls``-th
  retrieve (default 2). Reactivating a ``Deactivated`` deployment makes it ``Reactivating``, where it
  stays until a test calls :func:`set_status`; reactivating one that is deployed or reactivating is the
  spec's 400.

The state lives in ``fake.state["inference"]``; :func:`reset` clears it (``FakeVendor.reset`` keeps it).
"""

from __future__ import annotations

import itertools
from typing import Any

from .vendor_server import FakeVendor, Recorded, Reply

STATE = "inference"
CREATED = 1741570283
# parameter_template values are oneOf string|number|integer: an integer matches two branches, so the spec
# only admits strings and fractional numbers there.
BASE_MODELS: list[dict[str, Any]] = [
    {
        "name": "Llama-3.2-1B-Instruct",
        "type": "completion",
        "parameter_template": {"learning_rate": 0.0002, "lr_scheduler_type": "linear"},
        "support_serverless": True,
    },
    {
        "name": "Llama-3.1-8B-Instruct",
        "type": "chat",
        "parameter_template": {"learning_rate": 0.0001, "lr_scheduler_type": "cosine"},
        "support_serverless": True,
    },
]
COMPLETION_TEXT = " Paris. The French language is a Romance language and the official language of France."


# ------------------------------------------------------------------------------------------ test helpers
def state(fake: FakeVendor) -> dict[str, Any]:
    return fake.state.setdefault(STATE, _fresh())


def _fresh() -> dict[str, Any]:
    return {"deployments": {}, "replies": [], "deploy_after_polls": 2, "ids": itertools.count(1)}


def reset(fake: FakeVendor) -> None:
    fake.state[STATE] = _fresh()


def add_deployment(
    fake: FakeVendor,
    project_id: str,
    name: str,
    status: str = "Deployed",
    training_job_id: str = "tr-12345",
    checkpoint: int = 3,
) -> dict[str, Any]:
    """A deployment that already exists on the account (as if created before the stack started)."""
    return _new_deployment(state(fake), project_id, name, status, training_job_id, checkpoint, None)


def deployment(fake: FakeVendor, name: str) -> dict[str, Any]:
    found = _by_name(state(fake), name)
    if found is None:
        raise KeyError(f"no deployment named {name!r} in the fake")
    return found


def set_status(fake: FakeVendor, name: str, status: str) -> None:
    """What Emissary does on its own: an idle deployment deactivates, a reactivation finishes, ..."""
    deployment(fake, name)["status"] = status


def script_reply(
    fake: FakeVendor,
    text: str,
    finish_reason: str | None = "stop",
    usage: dict[str, Any] | None = None,
    stop_reason: str | None = None,
) -> None:
    """The next chat or completion answer: exactly ``text``; ``finish_reason=None`` leaves the field out.

    ``stop_reason`` is the completion choice's field of that name (the stop string that matched).
    """
    state(fake)["replies"].append(
        {"text": text, "finish_reason": finish_reason, "usage": usage, "stop_reason": stop_reason}
    )


# ---------------------------------------------------------------------------------------------- install
def install(fake: FakeVendor) -> None:
    @fake.route("GET", "/v1/models")
    def list_models(recorded: Recorded, params: dict[str, str]) -> Any:
        return BASE_MODELS

    @fake.route("POST", "/v1/chat/completions")
    def chat(recorded: Recorded, params: dict[str, str]) -> Any:
        body = recorded.json
        refused = _check_model(fake, body["model"])
        if refused is not None:
            return refused
        messages = body["messages"]
        prompt = " ".join(m.get("content", "") for m in messages)
        text, finish, usage = _answer(
            fake, f"You said: {messages[-1].get('content', '')}", body.get("max_tokens"), prompt
        )
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "refusal": None}
        if finish is not None:
            choice["finish_reason"] = finish
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        return {
            "id": f"chatcmpl-{len(fake.requests)}",
            "object": "chat.completion",
            "created": CREATED,
            "model": body["model"],
            "choices": [choice],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    @fake.route("POST", "/v1/completions")
    def completion(recorded: Recorded, params: dict[str, str]) -> Any:
        body = recorded.json
        refused = _check_model(fake, body["model"])
        if refused is not None:
            return refused
        stop_string = state(fake)["replies"][0]["stop_reason"] if state(fake)["replies"] else None
        text, finish, usage = _answer(fake, COMPLETION_TEXT, body.get("max_completion_tokens"), body["prompt"])
        choice: dict[str, Any] = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "prompt_logprobs": None,
            "stop_reason": stop_string,
        }
        if finish is not None:
            choice["finish_reason"] = finish
        usage["prompt_tokens_details"] = None
        return {
            "id": f"cmpl-{len(fake.requests)}",
            "object": "text_completion",
            "created": CREATED,
            "model": body["model"],
            "choices": [choice],
            "usage": usage,
        }

    @fake.route("POST", "/v1/embeddings")
    def embeddings(recorded: Recorded, params: dict[str, str]) -> Any:
        body = recorded.json
        refused = _check_model(fake, body["model"])
        if refused is not None:
            return refused
        source, target = _vector(body["input"]), _vector(body["target"])
        response: dict[str, Any] = {"input_embedding": source, "target_embedding": target}
        if body.get("cosine", True):
            response["cosine_score"] = _cosine(source, target)
        return {"id": f"rq-{len(fake.requests)}", "response": response}

    @fake.route("GET", "/v1/projects/{project_id}/deployments")
    def list_deployments(recorded: Recorded, params: dict[str, str]) -> Any:
        records = state(fake)["deployments"].values()
        return [_summary(d) for d in records if d["project_id"] == params["project_id"]]

    @fake.route("POST", "/v1/projects/{project_id}/deployments")
    def create_deployment(recorded: Recorded, params: dict[str, str]) -> Any:
        body = recorded.json
        data = state(fake)
        name = body.get("name") or f"deployment-{len(data['deployments']) + 1}"
        if _by_name(data, name) is not None:
            return Reply(fake.error_body(400, f"A deployment named {name} already exists"), 400)
        created = _new_deployment(
            data,
            params["project_id"],
            name,
            "Deploying",
            body["training_job_id"],
            body["checkpoint"],
            body.get("description"),
        )
        return Reply(_summary(created), 201)

    @fake.route("GET", "/v1/projects/{project_id}/deployments/{deployment_id}")
    def get_deployment(recorded: Recorded, params: dict[str, str]) -> Any:
        found = _in_project(fake, params)
        if found is None:
            return Reply(fake.error_body(404, "Not found"), 404)
        found["polls"] += 1
        if found["status"] == "Deploying" and found["polls"] >= state(fake)["deploy_after_polls"]:
            found["status"] = "Deployed"
        return _detail(found)

    @fake.route("POST", "/v1/projects/{project_id}/deployments/{deployment_id}/reactivate")
    def reactivate(recorded: Recorded, params: dict[str, str]) -> Any:
        found = _in_project(fake, params)
        if found is None:
            return Reply(fake.error_body(404, "Not found"), 404)
        if found["status"] != "Deactivated":
            # The spec's 400 here has no body schema: answer the status alone.
            return Reply(None, 400)
        found["status"] = "Reactivating"
        return Reply(None, 204)


# ------------------------------------------------------------------------------------------------ inner
def _new_deployment(
    data: dict[str, Any],
    project_id: str,
    name: str,
    status: str,
    training_job_id: str,
    checkpoint: int,
    description: str | None,
) -> dict[str, Any]:
    deployment_id = f"dp-{next(data['ids']):05d}"
    record = {
        "id": deployment_id,
        "name": name,
        "project_id": project_id,
        "status": status,
        "training_id": training_job_id,
        "checkpoint": checkpoint,
        "description": description or "",
        "polls": 0,
    }
    data["deployments"][deployment_id] = record
    return record


def _by_name(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((d for d in data["deployments"].values() if d["name"] == name), None)


def _in_project(fake: FakeVendor, params: dict[str, str]) -> dict[str, Any] | None:
    found = state(fake)["deployments"].get(params["deployment_id"])
    return found if found is not None and found["project_id"] == params["project_id"] else None


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": record["id"], "name": record["name"], "status": record["status"], "created_at": 1633036800}


def _detail(record: dict[str, Any]) -> dict[str, Any]:
    return {
        **_summary(record),
        "task_type": "text-generation",
        "description": record["description"],
        "base_model": "Llama-3.2-1B-Instruct",
        "training_id": record["training_id"],
        "checkpoint": record["checkpoint"],
        "updated_at": 1633036800 + record["polls"],
    }


def _check_model(fake: FakeVendor, model: str) -> Reply | None:
    if any(m["name"] == model for m in BASE_MODELS):
        return None
    found = _by_name(state(fake), model)
    if found is None:
        return Reply(fake.error_body(404, "Not found"), 404)
    if found["status"] != "Deployed":
        return Reply(fake.error_body(400, f"Deployment {model} is {found['status']}"), 400)
    return None


def _answer(fake: FakeVendor, default: str, limit: int | None, prompt: str) -> tuple[str, str | None, dict[str, Any]]:
    replies = state(fake)["replies"]
    if replies:
        scripted = replies.pop(0)
        usage = scripted["usage"] or _usage(prompt, scripted["text"])
        return scripted["text"], scripted["finish_reason"], usage
    words = default.split(" ")
    finish = "stop"
    if limit and len(words) > limit:
        words, finish = words[:limit], "length"
    text = " ".join(words)
    return text, finish, _usage(prompt, text)


def _usage(prompt: str, text: str) -> dict[str, Any]:
    prompt_tokens, completion_tokens = len(prompt.split()), len(text.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _vector(text: str) -> list[float]:
    return [float(len(text)), float(len(text.split())), float(text.count("a")), 1.0]


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
    return dot / norm if norm else 0.0
