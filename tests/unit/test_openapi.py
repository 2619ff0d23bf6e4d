"""The OpenAPI document: valid OpenAPI 3.1, every route the gateway serves, and the same limits
as the validators (checked at each bound, so a number changed on one side fails here)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import hdrs
from openapi_spec_validator import OpenAPIV31SpecValidator
from redis.asyncio import Redis

from services.gateway import openapi, validation
from services.gateway.app import create_app
from services.gateway.tokens import TOKEN_FIELDS, parse_token_request
from services.gateway.validation import (
    RequestError,
    parse_changes,
    parse_submission,
    parse_time,
    query_int,
    query_text,
)
from shared.arrays import SpecError, parse_ref
from shared.settings import Settings
from shared.wiring import Wiring

SPEC = openapi.spec()
SCHEMAS = SPEC["components"]["schemas"]
SUBMISSION = SCHEMAS["JobSubmission"]["properties"]
CHANGES = SCHEMAS["JobChanges"]["properties"]


def served_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every route `create_app` registers (HEAD: aiohttp's twin of a GET)."""
    wiring = Wiring.build(Settings(), Redis(), pool=None)  # type: ignore[arg-type]  # no I/O
    app = create_app(wiring)
    if not any(r.resource is not None and r.resource.canonical == "/api/v1/openapi.json"
               for r in app.router.routes()):
        app.add_routes(openapi.routes)  # until app.py registers it
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.resource is not None and r.method != hdrs.METH_HEAD}


def test_the_document_is_valid_openapi_3_1() -> None:
    assert SPEC["openapi"].startswith("3.1.")
    errors = [str(e.message) for e in OpenAPIV31SpecValidator(SPEC).iter_errors()]
    assert errors == []


def test_every_served_route_is_documented_and_nothing_else() -> None:
    documented = {(method.upper(), path) for path, item in SPEC["paths"].items()
                  for method in item if method != "parameters"}
    assert served_routes() == documented


def test_bearer_everywhere_except_the_public_routes() -> None:
    assert SPEC["security"] == [{"bearer": []}]
    assert SPEC["components"]["securitySchemes"]["bearer"] == {"type": "http",
                                                               "scheme": "bearer"}
    public = {path for path, item in SPEC["paths"].items()
              for method, o in item.items() if method != "parameters" and o.get("security") == []}
    assert public == {"/healthz", "/readyz", "/api/v1/openapi.json", "/", "/ui/{name}"}


def test_every_operation_documents_its_errors_in_the_error_shape() -> None:
    for path, item in SPEC["paths"].items():
        for method, o in item.items():
            if method == "parameters":
                continue
            codes = {int(c) for c in o["responses"]}
            assert any(200 <= c < 300 for c in codes), (method, path)
            assert not any(c >= 500 and c not in (503, 504) for c in codes), (method, path)
            if path not in openapi.PUBLIC:
                assert {401, 403, 503} <= codes, (method, path)
            for code in codes - set(range(200, 400)):  # a 304 is not an error
                if path != "/readyz":
                    body = o["responses"][str(code)]["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/Error"}, (method, path, code)


def test_the_request_bodies_have_exactly_the_fields_the_validators_take() -> None:
    assert set(SUBMISSION) == validation.FIELDS
    assert set(CHANGES) == set(validation.PATCHABLE)
    assert set(SCHEMAS["TokenRequest"]["properties"]) == TOKEN_FIELDS
    for name in ("JobSubmission", "JobChanges", "TokenRequest"):
        assert SCHEMAS[name]["additionalProperties"] is False
    assert SCHEMAS["JobSubmission"]["required"] == ["script"]


def submit(**fields: Any) -> Any:
    return parse_submission({"script": "true", **fields}, user="u", largest_cpus=None,
                            largest_memory_mb=None)


def accepted(parse: Any, **fields: Any) -> bool:
    """Whether the validator takes these fields (a refusal is always a 4xx)."""
    try:
        parse(**fields)
    except RequestError as e:
        if not 400 <= e.status < 500:
            raise
        return False
    return True


def change(**fields: Any) -> Any:
    return parse_changes(fields)


def bounded(props: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
    """The properties of type `kind` with a range or a length limit (times: their own test)."""
    return [(k, s) for k, s in props.items()
            if kind in ([s["type"]] if isinstance(s["type"], str) else s["type"])
            and ("minimum" in s or "maxLength" in s) and "format" not in s]


@pytest.mark.parametrize(("parse", "props"), [(submit, SUBMISSION), (change, CHANGES)],
                         ids=["POST /jobs", "PATCH /jobs/{id}"])
def test_integer_bounds_are_the_validators(parse: Any, props: dict[str, Any]) -> None:
    checked = []
    for key, s in bounded(props, "integer"):
        low, high = s["minimum"], s["maximum"]
        assert accepted(parse, **{key: low}) and accepted(parse, **{key: high}), key
        assert not accepted(parse, **{key: low - 1}), key
        assert not accepted(parse, **{key: high + 1}), key
        checked.append(key)
    assert {"cpus", "memory_mb", "time_limit", "priority"} <= set(checked)


@pytest.mark.parametrize(("parse", "props"), [(submit, SUBMISSION), (change, CHANGES)],
                         ids=["POST /jobs", "PATCH /jobs/{id}"])
def test_string_lengths_are_the_validators(parse: Any, props: dict[str, Any]) -> None:
    for key, s in bounded(props, "string"):
        if key == "script":
            continue  # bytes, not characters: below
        longest = s["maxLength"]
        fill = "/" + "x" * (longest - 1)  # also an absolute path, for workdir
        if key in ("array", "dependency"):  # their content must parse too: see which check
            for text, too_long in ((fill, False), (fill + "x", True)):
                with pytest.raises(RequestError) as e:
                    parse(**{key: text})
                assert ("must be a string such as" in e.value.message) == too_long, key
            continue
        assert accepted(parse, **{key: fill}), key
        with pytest.raises(RequestError):
            parse(**{key: fill + "x"})


def test_the_script_limit_is_the_validators() -> None:
    assert SUBMISSION["script"]["maxLength"] == validation.MAX_SCRIPT_BYTES
    assert submit(script="#" * validation.MAX_SCRIPT_BYTES)
    with pytest.raises(RequestError) as e:
        submit(script="#" * (validation.MAX_SCRIPT_BYTES + 1))
    assert e.value.status == 413


def test_the_environment_limits_are_the_validators() -> None:
    env = SUBMISSION["env"]
    many = {f"V{i}": "x" for i in range(env["maxProperties"])}
    assert submit(env=many)
    with pytest.raises(RequestError):
        submit(env={**many, "ONE_MORE": "x"})
    assert submit(env={"A": "x" * env["additionalProperties"]["maxLength"]})
    with pytest.raises(RequestError):
        submit(env={"A": "x" * (env["additionalProperties"]["maxLength"] + 1)})
    names = env["propertyNames"]
    for name in ("PATH", "_x1", "SCNS_JOB_ID", "SLURM_X", "1A", "A-B", ""):
        documented = bool(re.search(names["pattern"], name)) and not re.search(
            names["not"]["pattern"], name)
        assert accepted(submit, env={name: "v"}) == documented, name


@pytest.mark.parametrize("value", [
    "2026-11-24", "2026-11-24T02:30", "2026-11-24T02:30:00Z", "2026-11-24 02:30:00.123456",
    "1970-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z", "2026-11-24T02:30:00-05:30",
])
def test_documented_times_parse(value: str) -> None:
    assert re.search(openapi.ISO_TIME, value)
    low, high = openapi.TIME_LENGTH
    assert low <= len(value) <= high
    parse_time(value, "begin_at")


@pytest.mark.parametrize("value", ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
                                   "9999-12-31T23:59:59-01:00", "2026-1-2", "x" * 41])
def test_times_out_of_range_are_a_400_not_a_crash(value: str) -> None:
    with pytest.raises(RequestError) as e:
        parse_time(value, "begin_at")
    assert e.value.status == 400


@pytest.mark.parametrize(("value", "ok"), [
    ("1", True), ("999999999999999999", True), ("12_3", True), ("12_999999999", True),
    ("0", False), ("1000000000000000000", False), ("12_", False), ("a", False),
])
def test_job_refs_match_parse_ref(value: str, ok: bool) -> None:
    assert bool(re.search(openapi.JOB_REF, value)) == ok
    if ok:
        assert parse_ref(value).id <= validation.MAX_ID
    else:
        with pytest.raises((SpecError, AssertionError)):
            assert parse_ref(value).id <= validation.MAX_ID


@pytest.mark.parametrize("value", ["--5", "-", "5-", "+5", "1e3", "٣", "1" * 13, " 5"])
def test_query_integers_that_are_not_numbers_are_a_400(value: str) -> None:
    with pytest.raises(RequestError) as e:
        query_int({"limit": value}, "limit", default=1, low=1, high=1000)
    assert e.value.status == 400


def test_query_limits_are_the_validators() -> None:
    assert query_int({"limit": "-3"}, "limit", default=1, low=-5, high=5) == -3
    assert query_int({"limit": ""}, "limit", default=7, low=1, high=9) == 7
    longest = openapi.MAX_QUERY_TEXT
    assert query_text({"user": "u" * longest}, "user") == "u" * longest
    with pytest.raises(RequestError):
        query_text({"user": "u" * (longest + 1)}, "user")


def test_token_requests_match_the_token_validator() -> None:
    props = SCHEMAS["TokenRequest"]["properties"]
    top = props["expires_in_s"]["maximum"]
    assert parse_token_request({"user": "u" * props["user"]["maxLength"], "role": "admin",
                                "expires_in_s": top})
    for bad in ({"user": "u", "expires_in_s": top + 1}, {"user": "u", "expires_in_s": 0},
                {"user": "u" * 65}, {"user": "a b"}, {"user": "u", "role": "root"}):
        with pytest.raises(RequestError):
            parse_token_request(bad)


def test_the_document_is_built_once() -> None:
    assert openapi.spec() is openapi.spec()
