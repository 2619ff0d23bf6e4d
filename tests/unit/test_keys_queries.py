from __future__ import annotations

import re

import pytest

from shared.db.migrate import load_migrations
from shared.db.queries import parse, queries
from shared.keys import STREAM_TYPES, Keys
from shared.lua import NAMES, source


def test_every_key_carries_the_hash_tag() -> None:
    k = Keys("{t1}:")
    built = [k.worker_lease("w"), k.member("w"), k.workers_known, k.workers_live,
             k.workers_drained, k.worker_alloc("w"), k.allocations, k.allocated_cpus,
             k.allocated_memory_mb, k.total_cpus, k.total_memory_mb, k.dead_letter,
             k.dedup("g", "e"), k.wakeup("x"), k.lock("l"),
             *(k.stream(t) for t in STREAM_TYPES)]
    assert all(key.startswith("{t1}:") for key in built)
    assert len(set(built)) == len(built)


def test_seed_counter_name_lives_on() -> None:
    assert Keys().allocated_cpus == "{scns}:resource:allocated_cpus"
    assert Keys().worker_lease("n1") == "{scns}:worker:n1"


def test_scan_pattern_escapes_glob_characters() -> None:
    assert Keys("{t[1]}:").pattern() == "{t\\[1\\]}:*"


def test_named_queries_parse() -> None:
    q = queries()
    assert {"insert_job", "finish_jobs", "requeue_job", "worker_joined"} <= set(q)
    assert all(body.strip() for body in q.values())


def test_duplicate_query_names_are_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_migrations_are_numbered_in_order() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))


@pytest.mark.parametrize("name", NAMES)
def test_lua_scripts_ship_and_do_not_leak_globals(name: str) -> None:
    text = source(name)
    assert text.strip()
    # every assignment at the start of a line must be a local declaration (Redis refuses
    # global variables in scripts)
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        assert m is None, f"{name}.lua assigns a global: {line}"
