"""Settings precedence: flags > env > TOML > defaults; clear errors; secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from stream.config import KafkaConfig, load_settings, parse_client_overrides


def test_defaults_without_anything():
    s = load_settings({}, env={})
    assert s.kafka.bootstrap_servers is None
    assert s.topics.events == "interest.events"
    assert s.topics.recommendations == "interest.recommendations"
    assert s.topics.dead_letter == "interest.dead-letter"
    assert s.worker.k == 10


def test_flag_beats_env_beats_file(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text(
        '[kafka]\nbootstrap_servers = "file:1"\n[worker]\ngroup = "g-file"\nk = 5\n'
        '[topics]\nevents = "ev-file"\n'
    )
    env = {"INTEREST_KAFKA_BOOTSTRAP": "env:1", "INTEREST_GROUP": "g-env"}
    s = load_settings({"bootstrap_servers": "flag:1"}, env=env, config_file=f)
    assert s.kafka.bootstrap_servers == "flag:1"
    assert s.worker.group == "g-env"
    assert s.worker.k == 5
    assert s.topics.events == "ev-file"
    assert load_settings({}, env=env, config_file=f).kafka.bootstrap_servers == "env:1"
    assert load_settings({}, env={}, config_file=f).kafka.bootstrap_servers == "file:1"


def test_client_settings_pass_through_and_secrets_are_hidden(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text('[kafka.client]\n"security.protocol" = "SASL_SSL"\n"sasl.password" = "hunter2"\n')
    env = {"INTEREST_KAFKA_CLIENT_SASL_MECHANISM": "PLAIN"}
    s = load_settings(
        {"bootstrap_servers": "b:9", "client": {"sasl.username": "me"}}, env=env, config_file=f
    )
    conf = s.kafka.client_config(**{"group.id": "x"})
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "PLAIN"
    assert conf["sasl.username"] == "me"
    assert conf["sasl.password"] == "hunter2"
    assert conf["group.id"] == "x"
    assert "hunter2" not in repr(s.kafka) and "hunter2" not in repr(s)


@pytest.mark.parametrize(
    "content, message",
    [
        ("[worker]\nk = -1\n", "worker.k must be a positive integer"),
        ("[worker]\nbatch_max_events = 'many'\n", "batch_max_events must be a positive integer"),
        ("[wroker]\n", "unknown section"),
        ("[worker]\ngruop = 'x'\n", r"unknown setting\(s\) \['gruop'\] in \[worker\]"),
        ("[kafka]\nclient = 'x'\n", r"\[kafka.client\] must be a table"),
        ("kafka = 5\n", r"\[kafka\] must be a table"),
        ("[worker]\nmetrics_port = 70000\n", "metrics_port must be from 0 to 65535"),
        ("[worker]\nk = true\n", "worker.k must be a positive integer"),
        ("[worker]\nk = 2.5\n", "worker.k must be a positive integer"),
        ("[worker]\nmax_id_bytes = 0\n", "worker.max_id_bytes must be a positive integer"),
        ("[topics]\nevents = ['a']\n", "topics.events must be a single value"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_config_file_is_one_clear_error(tmp_path: Path, content: str, message: str):
    f = tmp_path / "c.toml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings({}, env={}, config_file=f)


def test_id_byte_limit_from_env_or_file(tmp_path: Path):
    assert load_settings({}, env={}).worker.max_id_bytes == 256
    f = tmp_path / "c.toml"
    f.write_text("[worker]\nmax_id_bytes = 128\n")
    assert load_settings({}, env={}, config_file=f).worker.max_id_bytes == 128
    env = {"INTEREST_MAX_ID_BYTES": "64"}
    assert load_settings({}, env=env, config_file=f).worker.max_id_bytes == 64


def test_missing_config_file_and_bad_env_value():
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, env={}, config_file="/nonexistent/x.toml")
    with pytest.raises(ConfigError, match="INTEREST_METRICS_PORT"):
        load_settings({}, env={"INTEREST_METRICS_PORT": "http"})


def test_client_override_parsing():
    assert parse_client_overrides(["a.b=1", "c=x=y"]) == {"a.b": "1", "c": "x=y"}
    with pytest.raises(ConfigError, match="name=value"):
        parse_client_overrides(["novalue"])


def test_client_config_without_bootstrap_says_how_to_set_it():
    with pytest.raises(ConfigError, match="INTEREST_KAFKA_BOOTSTRAP"):
        KafkaConfig().client_config()


def test_the_user_id_key_comes_from_the_environment_or_a_file_and_is_never_printed(
    tmp_path: Path,
):
    assert load_settings({}, env={}).privacy.id_key is None
    secret = "correct-horse-battery-staple-42"
    s = load_settings({}, env={"INTEREST_ID_KEY": secret})
    assert s.privacy.id_key == secret.encode()
    assert secret not in repr(s) and secret not in str(s.privacy)
    key_file = tmp_path / "id.key"
    key_file.write_bytes(b"0123456789abcdef-from-a-file\n")  # the newline is not the key
    f = tmp_path / "c.toml"
    f.write_text(f'[privacy]\nid_key_file = "{key_file}"\nlog_ids = true\n')
    s = load_settings({}, env={}, config_file=f)
    assert s.privacy.id_key == b"0123456789abcdef-from-a-file"
    assert s.privacy.log_ids is True and s.privacy.id_key_file == key_file
    env = {"INTEREST_ID_KEY_FILE": str(key_file), "INTEREST_LOG_IDS": "0"}
    s = load_settings({}, env=env)
    assert s.privacy.id_key == b"0123456789abcdef-from-a-file" and s.privacy.log_ids is False


@pytest.mark.parametrize(
    "env, toml, message",
    [
        ({"INTEREST_ID_KEY": "short"}, "", r"\$INTEREST_ID_KEY holds 5 bytes; .* at least 16"),
        ({"INTEREST_ID_KEY": ""}, "", r"\$INTEREST_ID_KEY is set but empty"),
        ({"INTEREST_ID_KEY_FILE": "/nonexistent/id.key"}, "", "cannot be read"),
        ({"INTEREST_ID_KEY": "k" * 20, "INTEREST_ID_KEY_FILE": "x"}, "", "set only one"),
        ({}, "[privacy]\nid_key = 'k'\n", "secret in the config file"),
        ({"INTEREST_LOG_IDS": "maybe"}, "", "privacy.log_ids must be true or false"),
        ({}, "[privacy]\nlog_id = true\n", r"unknown setting\(s\) \['log_id'\]"),
    ],
)
def test_user_id_key_mistakes_are_one_clear_error(tmp_path: Path, env, toml, message):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings({}, env=env, config_file=f)
    assert "k" * 20 not in str(info.value)


def test_an_empty_items_topic_variable_turns_item_metadata_off():
    assert load_settings(env={}).topics.items == "interest.items"
    off = load_settings(env={"INTEREST_TOPIC_ITEMS": "", "INTEREST_TOPIC_EVENTS": ""})
    assert off.topics.items == ""
    assert off.topics.events == "interest.events"  # other empty variables are unset ones


def test_a_config_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_bytes(b"[worker]\ngroup = 'caf\xe9'\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xe9 at offset 21\)"):
        load_settings({}, env={}, config_file=f)


@pytest.mark.parametrize(
    "flags, env, toml, message",
    [
        ({"group": ""}, {}, "", "consumer group"),
        ({"group": "  "}, {}, "", "consumer group"),
        ({}, {}, "[worker]\ngroup = ''\n", "consumer group"),
        ({}, {}, "[topics]\nevents = ''\n", "events topic"),
        ({}, {}, "[topics]\nrecommendations = ''\n", "recommendations topic"),
        ({}, {}, "[topics]\ndead_letter = ''\n", "dead-letter topic"),
    ],
)
def test_an_empty_group_or_topic_name_is_one_clear_error(tmp_path: Path, flags, env, toml, message):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=f"the {message} .*must not be empty"):
        load_settings(flags, env=env, config_file=f)
