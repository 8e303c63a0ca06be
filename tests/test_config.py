"""Distribution YAML: validation errors name the file and key path; ${env.*} substitution."""

from __future__ import annotations

import subprocess

import pytest
from support import llama_stack_command

from llama_stack.apis.registry import Api
from llama_stack.config import ConfigError, load_distribution, parse_distribution, validate_provider_configs

VALID = """
apis: [inference]
providers:
  inference:
    - provider_id: replay
      provider_type: inline::replay
      config: {reply: "${env.REPLY:=hello there}"}
models:
  - model_id: m1
    provider_id: replay
server:
  port: ${env.PORT:=9000}
storage:
  dir: ${env.STATE_DIR}
"""


def parse(text: str, env: dict[str, str] | None = None):
    return parse_distribution(text, "dist.yaml", env if env is not None else {"STATE_DIR": "/tmp/state"})


def test_defaults_apply_when_the_variable_is_unset():
    config = parse(VALID)
    assert config.server.port == 9000
    assert config.providers["inference"][0].config == {"reply": "hello there"}
    assert str(config.storage.dir) == "/tmp/state"


def test_set_variables_win_over_defaults():
    config = parse(VALID, {"STATE_DIR": "/srv/x", "PORT": "8500", "REPLY": "bonjour"})
    assert config.server.port == 8500
    assert config.providers["inference"][0].config == {"reply": "bonjour"}


def test_an_unset_variable_without_default_names_it_and_where():
    with pytest.raises(ConfigError) as info:
        parse(VALID, {})
    message = str(info.value)
    assert message.startswith("dist.yaml:")
    assert "STATE_DIR" in message and "storage.dir" in message


def test_substitution_inside_a_longer_string():
    config = parse(VALID.replace("${env.STATE_DIR}", "/base/${env.NAME:=local}/state"), {})
    assert str(config.storage.dir) == "/base/local/state"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("port: ${env.PORT:=9000}", "port: lots"), "server.port: Input should be a valid integer"),
        (("port: ${env.PORT:=9000}", "prot: 1"), "server.prot: unknown key"),
        (
            ("provider_id: replay\n      provider_type", "provider_type"),
            "providers.inference[0].provider_id: required key is missing",
        ),
        (("apis: [inference]", "apis: [inference, telepathy]"), "apis[1]: Input should be"),
        (
            ("apis: [inference]", "apis: [inference, datasets]"),
            "API 'datasets' is listed in apis but has no entry under providers",
        ),
        (
            (
                "    provider_id: replay\nserver",
                "    provider_id: replay\n  - {model_id: m2, provider_id: replay, aliases: [m1]}\nserver",
            ),
            "model id or alias 'm1' is listed twice",
        ),
        (
            ("    provider_id: replay\nserver", "    provider_id: elsewhere\nserver"),
            "names provider_id 'elsewhere', which is not a provider of an API that serves models here (such providers: replay)",
        ),
    ],
)
def test_validation_errors_name_file_key_path_and_expectation(change, expected):
    old, new = change
    assert old in VALID
    with pytest.raises(ConfigError) as info:
        parse(VALID.replace(old, new))
    message = str(info.value)
    assert message.startswith("dist.yaml: invalid distribution")
    assert expected in message


def test_not_yaml_or_not_a_mapping():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse("apis: [inference\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse("- just\n- a list\n")


def test_unknown_provider_type_lists_the_available_ones(replay_registry):
    config = parse(VALID.replace("inline::replay", "inline::relpay"))
    with pytest.raises(ConfigError) as info:
        validate_provider_configs(config, replay_registry, "dist.yaml")
    message = str(info.value)
    assert "providers.inference[0].provider_type: unknown provider type 'inline::relpay'" in message
    assert "inline::replay" in message and "inline::llama-cpp" in message


def test_provider_config_is_validated_by_the_provider_model(replay_registry):
    config = parse(VALID.replace('config: {reply: "${env.REPLY:=hello there}"}', "config: {reply: [1], colour: red}"))
    with pytest.raises(ConfigError) as info:
        validate_provider_configs(config, replay_registry, "dist.yaml")
    message = str(info.value)
    assert "providers.inference[0].config.reply: Input should be a valid string" in message
    assert "providers.inference[0].config.colour" in message


def test_unknown_distribution_names_the_built_in_ones():
    with pytest.raises(ConfigError) as info:
        load_distribution("nosuch")
    assert "built-in: " in str(info.value) and "local" in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such distribution file"):
        load_distribution(tmp_path / "absent.yaml")


def test_the_built_in_local_distribution_is_valid(tmp_path):
    config = load_distribution("local", {"LLAMA_STACK_STORAGE": str(tmp_path)})
    assert config.apis == [
        "inference",
        "memory_banks",
        "safety",
        "tool_runtime",
        "agentic_system",
        "datasets",
        "post_training",
        "reward_scoring",
        "synthetic_data_generation",
    ]
    assert config.server.port == 8321
    assert [m.model_id for m in config.models] == ["smollm2-135m-instruct", "all-minilm-l6-v2", "smollm2-judge"]
    assert {(s.shield_id, s.shield_type.value) for s in config.shields} == {
        ("code-guard", "code_guard"),
        ("llama-guard", "llama_guard"),
    }
    # llama_guard runs on whichever served model LLAMA_GUARD_MODEL names.
    guarded = load_distribution("local", {"LLAMA_STACK_STORAGE": str(tmp_path), "LLAMA_GUARD_MODEL": "guard-1b"})
    (llama_guard,) = [p for p in guarded.providers[Api.safety] if p.provider_type == "inline::llama-guard"]
    assert llama_guard.config["model"] == "guard-1b"


def test_cli_run_reports_config_errors_and_env_overrides(tmp_path):
    path = tmp_path / "dist.yaml"
    path.write_text(VALID)
    result = subprocess.run(
        [*llama_stack_command(), "run", str(path)], capture_output=True, text=True, env={"PATH": ""}
    )
    assert result.returncode == 2
    assert "STATE_DIR" in result.stderr and str(path) in result.stderr
    result = subprocess.run(
        [*llama_stack_command(), "run", str(path), "--env", "STATE_DIR=/tmp/x", "--env", "PORT=notaport"],
        capture_output=True,
        text=True,
        env={"PATH": ""},
    )
    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_cli_lists_the_built_in_distributions():
    result = subprocess.run([*llama_stack_command(), "distributions"], capture_output=True, text=True, check=True)
    assert "local" in result.stdout


def test_cli_run_reports_startup_failures_without_a_traceback(tmp_path):
    bad_type = tmp_path / "bad-type.yaml"
    bad_type.write_text(VALID.replace("inline::replay", "inline::nosuch"))
    result = subprocess.run(
        [*llama_stack_command(), "run", str(bad_type), "--env", f"STATE_DIR={tmp_path}"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unknown provider type 'inline::nosuch'" in result.stderr and "inline::llama-cpp" in result.stderr
    assert "Traceback" not in result.stderr

    missing_model = tmp_path / "missing-model.yaml"
    missing_model.write_text(
        VALID.replace("inline::replay", "inline::llama-cpp")
        .replace('config: {reply: "${env.REPLY:=hello there}"}', "config: {}")
        .replace(
            "provider_id: replay\nserver", f"provider_id: replay\n    provider_model_id: {tmp_path}/absent.gguf\nserver"
        )
    )
    result = subprocess.run(
        [*llama_stack_command(), "run", str(missing_model), "--env", f"STATE_DIR={tmp_path}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "absent.gguf" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_shows_a_providers_config_fields_from_its_model():
    env = {"COLUMNS": "250", "PATH": ""}
    result = subprocess.run(
        [*llama_stack_command(), "providers", "--config", "inline::llama-cpp"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split("\t")[0]: line for line in result.stdout.splitlines()[2:]}  # piped: tab-separated rows
    assert {"n_ctx", "max_queue"} <= set(rows)
    assert "2048" in rows["n_ctx"] and "Context window" in rows["n_ctx"]
    unknown = subprocess.run(
        [*llama_stack_command(), "providers", "--config", "inline::nope"], capture_output=True, text=True, env=env
    )
    assert unknown.returncode == 2 and "inline::llama-cpp" in unknown.stderr


def test_every_api_may_have_several_providers_and_shields_name_one_of_them(tmp_path):
    path = tmp_path / "two-safety.yaml"
    text = """
apis: [safety]
providers:
  safety:
    - {provider_id: one, provider_type: remote::together, config: {}}
    - {provider_id: two, provider_type: remote::together, config: {}}
shields:
  - {shield_id: guard, provider_id: two, shield_type: llama_guard}
  - {shield_id: other, provider_id: three, shield_type: llama_guard}
"""
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_distribution(path)
    assert (
        "shield 'other' names provider_id 'three', which is not a safety provider here (safety providers: one, two)"
        in str(error.value)
    )
    path.write_text(text.replace("  - {shield_id: other, provider_id: three, shield_type: llama_guard}\n", ""))
    config = load_distribution(path)
    assert [p.provider_id for p in config.providers[Api.safety]] == ["one", "two"]
    assert [(s.shield_id, s.provider_id) for s in config.shields] == [("guard", "two")]
