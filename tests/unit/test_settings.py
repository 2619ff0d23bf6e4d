from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import Settings, parse_labels


def test_defaults_from_empty_env() -> None:
    s = Settings.from_env({"HOME": "/home/u"})
    assert s.key_prefix == "{scns}:"
    assert s.heartbeat_s == 30.0
    assert s.worker_ttl_s == 60.0
    assert s.data_dir == Path("/home/u/.local/share/scns")
    assert s.worker_cpus is None


def test_values_are_parsed() -> None:
    s = Settings.from_env({
        "SCNS_REDIS_URL": "redis://r:6379/1", "SCNS_WORKER_ID": "node-7",
        "SCNS_WORKER_CPUS": "4", "SCNS_WORKER_MEMORY_MB": "2048",
        "SCNS_WORKER_LABELS": "zone=a, pool=arm64", "SCNS_HEARTBEAT_S": "5",
        "SCNS_WORKER_TTL_S": "12.5", "SCNS_KEY_PREFIX": "{prod}:",
    })
    assert (s.redis_url, s.worker_id, s.worker_cpus, s.worker_memory_mb) == (
        "redis://r:6379/1", "node-7", 4, 2048)
    assert dict(s.worker_labels) == {"zone": "a", "pool": "arm64"}
    assert (s.heartbeat_s, s.worker_ttl_s, s.key_prefix) == (5.0, 12.5, "{prod}:")


def test_ttl_must_exceed_heartbeat() -> None:
    with pytest.raises(ConfigError, match="SCNS_WORKER_TTL_S must be greater than "
                                          "SCNS_HEARTBEAT_S"):
        Settings.from_env({"SCNS_HEARTBEAT_S": "30", "SCNS_WORKER_TTL_S": "30"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCNS_WORKER_CPUS": "zero"}, "SCNS_WORKER_CPUS='zero': not a number"),
        ({"SCNS_WORKER_CPUS": "-2"}, "SCNS_WORKER_CPUS='-2': must be a positive integer"),
        ({"SCNS_HEARTBEAT_S": "0"}, "SCNS_HEARTBEAT_S='0': must be a positive number"),
        ({"SCNS_GATEWAY_PORT": "70000"}, "must be a port number"),
        ({"SCNS_KEY_PREFIX": "scns:"}, "must contain a Redis hash tag"),
        ({"SCNS_WORKER_ID": "bad id!"}, "SCNS_WORKER_ID must be"),
        ({"SCNS_WORKER_LABELS": "novalue"}, "expected comma-separated key=value pairs"),
        ({"SCNS_REDIS_URL": "http://x"}, "SCNS_REDIS_URL must start with"),
        ({"SCNS_LOG_FORMAT": "xml"}, "SCNS_LOG_FORMAT must be one of"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SCNS_WORKER_CPUS": "x", "SCNS_HEARTBEAT_S": "90"})
    text = str(info.value)
    assert "SCNS_WORKER_CPUS" in text
    assert "SCNS_WORKER_TTL_S must be greater" in text


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.heartbeat_s = 1.0  # type: ignore[misc]


def test_as_env_round_trips() -> None:
    s = Settings.from_env({"SCNS_WORKER_LABELS": "b=2,a=1", "SCNS_WORKER_CPUS": "3",
                           "SCNS_WORKER_ID": "w1", "HOME": "/h"})
    again = Settings.from_env(s.as_env())
    assert again == s


def test_parse_labels_ignores_empty_items() -> None:
    assert parse_labels("a=1,,b=") == {"a": "1", "b": ""}
