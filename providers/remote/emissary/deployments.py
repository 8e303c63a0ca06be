"""remote::emissary deployments: the Emissary deployments that serve fine-tuned models, and their state.

A model whose ``metadata.deployment`` is set is served by the Emissary deployment named
``provider_model_id or model_id`` in the configured project. :meth:`Deployments.set_up` finds it (or creates
it from ``training_job_id`` and ``checkpoint``) and waits up to ``deployment_wait`` for ``Deployed``.
:meth:`Deployments.ready` checks the cached status before each request; a deployment that went idle
(``Deactivated``) is reactivated once and the request gets a retriable 503 at once instead of hanging for the
8 to 20 minutes reactivation takes. :meth:`Deployments.after_failure` re-checks the status when a request
failed as a deployment that stopped serving would.

The inference adapter (``inference.py``) only declares a model's deployment and asks these three questions;
everything about Emissary's deployment routes and statuses stays here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from llama_stack.apis.errors import (
    AuthenticationError,
    BadRequestError,
    LlamaStackError,
    NotFoundError,
    ProviderError,
    ProviderTimeoutError,
    ServiceUnavailableError,
)
from llama_stack.apis.inspect import Model
from llama_stack.providers.utils.remote import RemoteService, VendorStatusError
from llama_stack.providers.utils.remote.redaction import excerpt
from llama_stack.providers.utils.remote.url_paths import segment

from .config import EmissaryInferenceConfig

log = logging.getLogger(__name__)

DEPLOYED = "Deployed"
DEACTIVATED = "Deactivated"
REACTIVATING = "Reactivating"
STARTING = frozenset({"Pending", "Deploying"})
# Statuses a deployment does not leave by itself.
TERMINAL = frozenset({"Failed", "Cancelled", "Terminated", "TimedOut"})
REACTIVATION_TIME = "about 8 to 20 minutes"
# What a caller is told to wait before retrying a deployment that is coming up (Retry-After, in seconds).
REACTIVATION_RETRY_AFTER = 60.0


class DeploymentSpec(BaseModel):
    """A model's ``metadata.deployment``: which fine-tuned checkpoint its deployment serves."""

    model_config = ConfigDict(extra="forbid")

    training_job_id: str | None = Field(
        default=None, description="The training job (tr-...), or a base model name with checkpoint 0."
    )
    checkpoint: int | None = Field(default=None, ge=0, description="The checkpoint to serve (0: the base model).")
    description: str | None = None
    inactive_timeout: int | None = Field(
        default=None, gt=0, description="Idle seconds before Emissary deactivates it (Emissary's default: 3600)."
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> DeploymentSpec:
        if (self.training_job_id is None) != (self.checkpoint is None):
            raise ValueError(
                "training_job_id and checkpoint go together (both to create the deployment, neither to use an existing one)"
            )
        return self

    @property
    def creatable(self) -> bool:
        return self.training_job_id is not None


@dataclass
class Deployment:
    """What this provider knows of one deployment; ``status`` is a cache, refreshed as documented above."""

    model_id: str
    name: str
    project_id: str
    spec: DeploymentSpec
    id: str | None = None
    status: str | None = None
    checked_at: float = 0.0
    # Set once a reactivation was asked for this deactivation, so that concurrent and retried requests do
    # not ask again; cleared when the deployment is seen in any other status.
    reactivation_sent: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def label(self) -> str:
        where = f" ({self.id})" if self.id else ""
        return f"deployment '{self.name}'{where} of model '{self.model_id}'"


class Deployments:
    """Finds, creates, waits for and reactivates deployments; turns their status into request errors."""

    def __init__(self, svc: RemoteService, config: EmissaryInferenceConfig, provider_id: str):
        self._svc = svc
        self._config = config
        self._provider_id = provider_id

    # -- start-up --

    def declare(self, model: Model, name: str, raw: Any) -> Deployment:
        """The deployment named ``name`` that serves ``model``, as its ``metadata.deployment`` (``raw``) asks.

        A 400 when the provider has no project_id or the metadata is invalid; nothing is called yet.
        """
        return Deployment(model.model_id, name, self._project_for(model), self._spec_of(model, raw))

    def _project_for(self, model: Model) -> str:
        if not self._config.project_id:
            raise BadRequestError(
                f"{self._svc.name}: model '{model.model_id}' is served by a deployment (metadata.deployment) but the "
                "provider has no project_id; set project_id (ms-...) in its config",
                provider=self._provider_id,
                param="project_id",
                code="missing_project_id",
            )
        return self._config.project_id

    def _spec_of(self, model: Model, raw: Any) -> DeploymentSpec:
        try:
            return DeploymentSpec.model_validate(raw if raw is not None else {})
        except PydanticValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise BadRequestError(
                f"{self._svc.name}: model '{model.model_id}' has an invalid metadata.deployment: {problems}",
                provider=self._provider_id,
                param="metadata.deployment",
            ) from None

    async def set_up(self, deployment: Deployment) -> None:
        """Find or create it and wait for it; a problem only the user can fix stops the start-up.

        Problems that may pass (no key configured, the vendor unreachable or failing) are logged and the
        set-up is left to the first request, which answers 503 until the deployment is up.
        """
        try:
            await self._find_or_create(deployment)
            await self._wait(deployment)
        except LlamaStackError as exc:
            if not _deferrable(exc):
                raise
            log.warning(
                "%s: could not set up %s at start-up (%s); the first request to it tries again",
                self._svc.name,
                deployment.label,
                exc.message,
            )
            return
        if deployment.status in TERMINAL:
            raise self._status_error(deployment)

    async def _wait(self, deployment: Deployment) -> None:
        deadline = time.monotonic() + self._config.deployment_wait
        while deployment.status in STARTING or deployment.status == REACTIVATING:
            if time.monotonic() + self._config.poll_interval > deadline:
                log.warning(
                    "%s: %s is still %s after %g s; serving starts anyway and requests to the model answer 503 "
                    "until it is Deployed",
                    self._svc.name,
                    deployment.label,
                    deployment.status,
                    self._config.deployment_wait,
                )
                return
            await asyncio.sleep(self._config.poll_interval)  # the deployment's poll interval, not a race cover
            try:
                await self._fetch(deployment)
            except LlamaStackError as exc:
                if not _deferrable(exc):
                    raise
                # One failed poll is no reason to stop waiting: the next one may answer.
                log.warning("%s: checking %s failed: %s", self._svc.name, deployment.label, exc.message)
        if deployment.status == DEPLOYED:
            log.info("%s: %s is Deployed", self._svc.name, deployment.label)
        elif deployment.status == DEACTIVATED:
            # Waking it costs money and 8-20 minutes; the first request does it, as Emissary itself would.
            log.info("%s: %s is Deactivated; the first request to it reactivates it", self._svc.name, deployment.label)

    # -- requests --

    async def ready(self, deployment: Deployment) -> None:
        """Return when the deployment serves; otherwise raise what the request should answer."""
        if deployment.status == DEPLOYED:
            return
        async with deployment.lock:
            if deployment.status != DEPLOYED and self._stale(deployment):
                await self._refresh(deployment)
            self._raise_unless_deployed(deployment)

    async def after_failure(self, deployment: Deployment, error: LlamaStackError) -> None:
        """A request to the deployment failed with ``error``: re-check its status when the error is one a
        missing or sleeping model gives.

        Raises the deployment's error when it is not up; returns (the caller re-raises its own error)
        when it is, when ``error`` says nothing about the deployment, or when the check itself fails.
        """
        if not _may_mean_not_serving(error):
            return
        async with deployment.lock:
            try:
                await self._refresh(deployment)
            except LlamaStackError as exc:
                log.warning("%s: could not re-check %s: %s", self._svc.name, deployment.label, exc.message)
                return
            self._raise_unless_deployed(deployment)

    def _stale(self, deployment: Deployment) -> bool:
        if deployment.status is None:
            return True
        return time.monotonic() - deployment.checked_at >= self._config.status_recheck_interval

    async def _refresh(self, deployment: Deployment) -> None:
        if deployment.id is None:
            await self._find_or_create(deployment)
        else:
            try:
                await self._fetch(deployment)
            except VendorStatusError as exc:
                if exc.vendor_status != 404:
                    raise
                log.warning("%s: %s is gone; finding or creating it again", self._svc.name, deployment.label)
                deployment.id = deployment.status = None
                await self._find_or_create(deployment)
        if deployment.status == DEACTIVATED and not deployment.reactivation_sent:
            await self._reactivate(deployment)

    async def _reactivate(self, deployment: Deployment) -> None:
        path = f"{self._route(deployment)}/reactivate"
        try:
            await self._svc.json("POST", path)
        except BadRequestError as exc:
            # Emissary's 400 here means it is already deployed or reactivating: nothing more to ask.
            log.info("%s: reactivating %s: %s", self._svc.name, deployment.label, exc.message)
        else:
            log.info("%s: asked Emissary to reactivate %s", self._svc.name, deployment.label)
        deployment.reactivation_sent = True
        deployment.status = REACTIVATING

    # -- vendor calls --

    def _base(self, deployment: Deployment) -> str:
        return f"/v1/projects/{segment(deployment.project_id)}/deployments"

    def _route(self, deployment: Deployment) -> str:
        # Only reached once the deployment was found or created, which sets its id.
        assert deployment.id is not None, f"{deployment.label} has no id yet"
        return f"{self._base(deployment)}/{segment(deployment.id)}"

    async def _find_or_create(self, deployment: Deployment) -> None:
        try:
            listed = await self._svc.json("GET", self._base(deployment))
        except VendorStatusError as exc:
            if exc.vendor_status != 404:
                raise
            raise NotFoundError(
                f"{self._svc.name}: project '{deployment.project_id}' (the provider's project_id) does not exist "
                f"on Emissary, so {deployment.label} cannot be found or created",
                provider=self._provider_id,
                code="project_not_found",
            ) from None
        found = _pick([d for d in listed or [] if isinstance(d, dict) and d.get("name") == deployment.name])
        if found is not None:
            deployment.id = str(found["id"])
            await self._fetch(deployment, check_spec=True)
            return
        if not deployment.spec.creatable:
            raise NotFoundError(
                f"{self._svc.name}: there is no {deployment.label} in project '{deployment.project_id}'; create it "
                "on Emissary, or give training_job_id and checkpoint in the model's metadata.deployment so that "
                "it is created",
                provider=self._provider_id,
                code="deployment_not_found",
            )
        await self._create(deployment)

    async def _create(self, deployment: Deployment) -> None:
        spec = deployment.spec
        body: dict[str, Any] = {
            "training_job_id": spec.training_job_id,
            "checkpoint": spec.checkpoint,
            "name": deployment.name,
        }
        body["description"] = spec.description or f"llama-stack model {deployment.model_id}"
        if spec.inactive_timeout is not None:
            body["inactive_timeout"] = spec.inactive_timeout
        # Creating twice would make two deployments: a dropped connection is not retried.
        created = await self._svc.json("POST", self._base(deployment), json_body=body, idempotent=False)
        deployment.id = str(_field(created, "id", self._svc))
        deployment.status = str(created.get("status") or "Pending")
        deployment.checked_at = time.monotonic()
        log.info(
            "%s: created %s from %s checkpoint %s (%s)",
            self._svc.name,
            deployment.label,
            spec.training_job_id,
            spec.checkpoint,
            deployment.status,
        )

    async def _fetch(self, deployment: Deployment, check_spec: bool = False) -> None:
        detail = await self._svc.json("GET", self._route(deployment))
        status = str(_field(detail, "status", self._svc))
        if check_spec:
            self._check_spec(deployment, detail)
        if status != DEACTIVATED:
            deployment.reactivation_sent = False
        if status != deployment.status:
            log.info("%s: %s is %s", self._svc.name, deployment.label, status)
        deployment.status = status
        deployment.checked_at = time.monotonic()

    def _check_spec(self, deployment: Deployment, detail: dict[str, Any]) -> None:
        """An existing deployment of that name must serve what the model's metadata asks for."""
        spec = deployment.spec
        if not spec.creatable:
            return
        serves = (detail.get("training_id"), detail.get("checkpoint"))
        if None in serves or serves == (spec.training_job_id, spec.checkpoint):
            return
        raise BadRequestError(
            f"{self._svc.name}: {deployment.label} already exists and serves {serves[0]} checkpoint {serves[1]}, "
            f"but the model's metadata.deployment asks for {spec.training_job_id} checkpoint {spec.checkpoint}; "
            "delete the deployment on Emissary or give the model another provider_model_id",
            provider=self._provider_id,
            param="metadata.deployment",
            code="deployment_mismatch",
        )

    # -- status -> error --

    def _raise_unless_deployed(self, deployment: Deployment) -> None:
        if deployment.status != DEPLOYED:
            raise self._status_error(deployment)

    def _status_error(self, deployment: Deployment) -> LlamaStackError:
        status = deployment.status
        if status in (DEACTIVATED, REACTIVATING):
            return ServiceUnavailableError(
                f"{self._svc.name}: {deployment.label} was deactivated after being idle and is being reactivated, "
                f"which takes {REACTIVATION_TIME}; retry later",
                code="deployment_reactivating",
                retry_after=REACTIVATION_RETRY_AFTER,
                provider=self._provider_id,
            )
        if status in TERMINAL:
            return ProviderError(
                f"{self._svc.name}: {deployment.label} is {status} and will not come back by itself; delete it on "
                "Emissary and restart the stack to create it again, or give the model another provider_model_id",
                code="deployment_failed",
                provider=self._provider_id,
            )
        return ServiceUnavailableError(
            f"{self._svc.name}: {deployment.label} is not serving yet (status {status}); retry in a few minutes",
            code="deployment_starting",
            retry_after=REACTIVATION_RETRY_AFTER,
            provider=self._provider_id,
        )


def _may_mean_not_serving(exc: LlamaStackError) -> bool:
    """Errors a deployment that stopped serving gives: an unknown model (404), a refusal (400), a hang."""
    if isinstance(exc, VendorStatusError):
        return exc.vendor_status == 404
    return isinstance(exc, (BadRequestError, ProviderTimeoutError))


def _pick(matches: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of several deployments with one name: a Deployed one, else any live one, else what is there."""
    for wanted in (lambda d: d.get("status") == DEPLOYED, lambda d: d.get("status") not in TERMINAL, lambda d: True):
        chosen = next((d for d in matches if wanted(d)), None)
        if chosen is not None:
            return chosen
    return None


def _deferrable(exc: LlamaStackError) -> bool:
    """Whether a set-up failure may pass at start-up: no key yet, or the vendor down, slow or failing."""
    if isinstance(exc, AuthenticationError):
        return exc.code == "missing_api_key"
    if isinstance(exc, VendorStatusError):
        return exc.vendor_status >= 500
    if isinstance(exc, (ServiceUnavailableError, ProviderTimeoutError)):
        return True
    return type(exc) is ProviderError and exc.code is None


def _field(body: Any, name: str, svc: RemoteService) -> Any:
    if not isinstance(body, dict) or body.get(name) is None:
        raise ProviderError(f"{svc.name} answered without '{name}': {excerpt(body)}", provider=svc.provider_id)
    return body[name]
