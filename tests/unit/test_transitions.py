"""The transition table in code is what the SQL guards enforce, and only the lifecycle module
changes jobs.

* Every statement of queries.sql that writes `jobs` names its operation, guards on the
  operation's source states through `{from:OP}` (filled in from shared/states.py), writes only
  states of that operation, checks a state passed as a parameter against `{to:OP}`, and starts a
  new attempt exactly when the operation's table row says it may.
* No Python module under shared/ or services/ spells a job-state UPDATE.
* Outside shared/lifecycle, no module runs a transition's statement, touches the capacity or
  dispatch steps of an operation, or makes a job event.

(tests/integration/test_lifecycle_guards.py runs every guarded statement from every state
against a real PostgreSQL.)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from shared.db.queries import expand, queries, raw_queries
from shared.states import TRANSITIONS, JobState, Op, sql_list

ROOT = Path(__file__).resolve().parents[2]
WRITES_JOBS = re.compile(r"\b(UPDATE\s+jobs|INSERT\s+INTO\s+jobs)\b", re.IGNORECASE)
TAG = re.compile(r"^-- transition: ([a-z_]+)\s*$", re.MULTILINE)
STATE_LITERAL = re.compile(r"'(" + "|".join(s.value for s in JobState) + r")'")
STATE_PARAM = re.compile(r"\bstate\s*=\s*(\$\d+)")
COMMENT = re.compile(r"--[^\n]*")


def tagged() -> dict[str, Op]:
    out = {}
    for name, sql in raw_queries().items():
        tags = TAG.findall(sql)
        if tags:
            assert len(tags) == 1, f"{name}: one operation per statement"
            out[name] = Op(tags[0])
    return out


def body(name: str) -> str:
    return COMMENT.sub("", raw_queries()[name])


def test_every_statement_that_writes_a_job_names_its_operation() -> None:
    writers = {name for name in raw_queries() if WRITES_JOBS.search(body(name))}
    assert writers, "queries.sql writes jobs somewhere"
    assert writers == set(tagged()), (
        f"untagged writers: {writers - set(tagged())}; tagged but not writing: "
        f"{set(tagged()) - writers}")


def test_every_operation_has_its_statement() -> None:
    assert set(tagged().values()) == set(Op)


@pytest.mark.parametrize("name", sorted(tagged()))
def test_guard_is_the_operations_source_states(name: str) -> None:
    op, sql = tagged()[name], body(name)
    updates = len(re.findall(r"\bUPDATE\s+jobs\b", sql, re.IGNORECASE))
    guards = re.findall(r"(?:\b\w+\.)?state\s+IN\s+\{from:([a-z_]+)\}", sql)
    assert len(guards) >= updates, f"{name}: every UPDATE of jobs guards on {{from:{op}}}"
    assert set(guards) <= {op.value}, f"{name} guards with another operation's states"
    # no hand-written state guard that could drift from the table (promote_due's is in the
    # read that follows its UPDATE)
    written = sql.split("SELECT (SELECT")[0]
    for where in re.findall(r"\bWHERE\b(.*?)(?:RETURNING|FOR UPDATE|\n\)|;)", written, re.S):
        # (a dependency's or edge's own state, 'waiting', is not a job state)
        assert not re.search(r"\bstate\s*(?:IN|=)\s*\(?\s*" + STATE_LITERAL.pattern, where), \
            f"{name}: {where}"


@pytest.mark.parametrize("name", sorted(tagged()))
def test_only_the_operations_states_are_written(name: str) -> None:
    op, sql = tagged()[name], body(name)
    t = TRANSITIONS[op]
    literals = {JobState(x) for x in STATE_LITERAL.findall(sql)}
    assert literals <= t.sources | t.to | t.again, (
        f"{name} ({op}) mentions {sorted(literals - (t.sources | t.to | t.again))}")
    for param in STATE_PARAM.findall(sql):
        assert re.search(re.escape(param) + r"(::\w+)?\s+IN\s+\{to:" + op.value + r"\}", sql), \
            f"{name} sets state from {param} without checking it against {{to:{op}}}"
    assert "f.state IN {to:finish}" in sql if op is Op.FINISH else True


@pytest.mark.parametrize("name", sorted(tagged()))
def test_a_new_attempt_exactly_where_the_table_allows_one(name: str) -> None:
    op, sql = tagged()[name], body(name)
    bumps = re.search(r"\battempt\s*=\s*(?:\w+\.)?attempt\s*\+", sql) is not None
    assert bumps == bool(TRANSITIONS[op].again), name


@pytest.mark.parametrize("op", [op for op in Op if TRANSITIONS[op].sources])
def test_guards_are_generated_from_the_table(op: Op) -> None:
    assert expand(f"state IN {{from:{op}}}") == f"state IN {sql_list(TRANSITIONS[op].sources)}"
    for name, o in tagged().items():
        if o is op and "{from:" in raw_queries()[name]:
            assert f"state IN {sql_list(TRANSITIONS[op].sources)}" in queries()[name]
            assert "{from:" not in queries()[name] and "{to:" not in queries()[name]


def test_finish_may_only_end_in_a_terminal_state_or_a_new_attempt() -> None:
    sql = queries()["finish_jobs"]
    assert ("f.state IN ('CANCELLED', 'COMPLETED', 'FAILED', 'NODE_FAIL', 'OUT_OF_MEMORY', "
            "'TIMEOUT')") in sql


# --- nothing outside queries.sql and the lifecycle ----------------------------------------
def python_files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


def test_no_job_state_update_outside_queries_sql() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in python_files("shared", "services")
                 if WRITES_JOBS.search(p.read_text())]
    assert offenders == []


LIFECYCLE = ROOT / "shared" / "lifecycle"
STEP_CALLS = {"allocate", "allocate_many", "release", "release_in", "enqueue", "withdraw",
              "withdraw_in"}
JOB_EVENTS = {"JobSubmitted", "JobAllocated", "JobStarted", "JobFinished", "JobRequeued",
              "JobUpdated", "CancelRequested"}
DEFINERS = {ROOT / "shared" / "allocation.py", ROOT / "shared" / "dispatch.py",
            ROOT / "shared" / "events.py"}


def _receiver(node: ast.expr) -> str:
    return ast.unparse(node).rsplit(".", 1)[-1]


def lifecycle_steps_in(path: Path) -> list[str]:
    """What in `path` belongs to the lifecycle: running a transition's statement, a capacity
    or dispatch step, or making a job event."""
    transition_queries = set(tagged())
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "shared.lifecycle.store":
            found.append(f"imports {node.module}")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "q" and node.args \
                and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value in transition_queries:
            found.append(f"runs {node.args[0].value}")
        if isinstance(f, ast.Attribute) and f.attr in STEP_CALLS \
                and _receiver(f.value) in ("allocator", "dispatcher"):
            found.append(f"calls {ast.unparse(f)}")
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name in JOB_EVENTS:
            found.append(f"makes {name}")
    return found


def test_no_lifecycle_step_outside_the_lifecycle_module() -> None:
    offenders = {str(p.relative_to(ROOT)): steps
                 for p in python_files("shared", "services")
                 if LIFECYCLE not in p.parents and p not in DEFINERS
                 and (steps := lifecycle_steps_in(p))}
    assert offenders == {}


def test_the_check_above_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("async def f(self):\n"
                   "    await self.pool.fetch(q('finish_jobs'))\n"
                   "    await self.allocator.release(job_id=1, attempt=1, worker_id='w')\n"
                   "    await self.bus.publish(JobFinished(job_id=1))\n")
    assert set(lifecycle_steps_in(bad)) == {"runs finish_jobs", "calls self.allocator.release",
                                            "makes JobFinished"}
