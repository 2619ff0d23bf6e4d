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


# --- URLs from mounted files (Kubernetes Secrets as files) --------------------------------------
def test_urls_are_read_from_files(tmp_path: Path) -> None:
    (tmp_path / "redis-url").write_text("rediss://:pw@r:6380/0\n")
    (tmp_path / "database-url").write_text("  postgresql://app:pw@pg:5432/scns \n")
    s = Settings.from_env({"SCNS_REDIS_URL_FILE": str(tmp_path / "redis-url"),
                           "SCNS_DATABASE_URL_FILE": str(tmp_path / "database-url")})
    assert (s.redis_url, s.database_url) == ("rediss://:pw@r:6380/0",
                                             "postgresql://app:pw@pg:5432/scns")
    # what as_env() hands a child (the URL itself) beside the inherited *_FILE agrees
    again = Settings.from_env({"SCNS_REDIS_URL_FILE": str(tmp_path / "redis-url"),
                               **s.as_env()})
    assert again.redis_url == s.redis_url


@pytest.mark.parametrize(("content", "message"), [
    (None, r"SCNS_DATABASE_URL_FILE='.*missing': cannot read it \(FileNotFoundError"),
    ("\n", "SCNS_DATABASE_URL_FILE=.*: the file is empty"),
    ("postgresql://a@b/c", "set SCNS_DATABASE_URL or SCNS_DATABASE_URL_FILE, not both"),
])
def test_bad_url_files_are_named(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / ("missing" if content is None else "database-url")
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"SCNS_DATABASE_URL_FILE": str(path),
                           "SCNS_DATABASE_URL": "postgresql://other@x/y"})


def test_a_url_file_is_checked_like_the_variable(tmp_path: Path) -> None:
    (tmp_path / "u").write_text("mysql://nope")
    with pytest.raises(ConfigError, match="SCNS_DATABASE_URL must start with postgresql://"):
        Settings.from_env({"SCNS_DATABASE_URL_FILE": str(tmp_path / "u")})


@pytest.mark.parametrize(("raw", "expected"), [("", True), ("0", False), ("false", False),
                                               ("1", True), ("yes", True)])
def test_migrate_on_start(raw: str, expected: bool) -> None:
    assert Settings.from_env({"SCNS_MIGRATE_ON_START": raw}).migrate_on_start is expected
    with pytest.raises(ConfigError, match="SCNS_MIGRATE_ON_START='maybe': must be true or"):
        Settings.from_env({"SCNS_MIGRATE_ON_START": "maybe"})
