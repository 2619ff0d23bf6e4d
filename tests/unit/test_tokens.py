"""Pure parts of authentication: token shape and digest, the verified-token cache, token
lifetimes on the command line, and the cross-origin check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import make_mocked_request

from services.cli.tokens import parse_lifetime
from services.gateway.auth import TokenCache, cross_site
from services.gateway.common import Principal
from shared.db.tokens import PREFIX, TokenRow, digest, looks_like_token, new_token
from shared.lifecycle import Role


def _row(expires_at: datetime | None = None) -> TokenRow:
    return TokenRow(id="t1", user="ann", role="user", created_at=datetime.now(UTC),
                    created_by=None, expires_at=expires_at, revoked_at=None, expired=False)


def test_tokens_are_random_long_and_shaped() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(t.startswith(PREFIX) and len(t) == len(PREFIX) + 43 and looks_like_token(t)
               for t in tokens)
    for not_ours in ("", "Bearer x", "scns_", "x" * 60, PREFIX + "é" * 40, PREFIX + "a" * 300):
        assert not looks_like_token(not_ours)


def test_digest_is_sha256_and_does_not_contain_the_token() -> None:
    t = new_token()
    d = digest(t)
    assert len(d) == 32 and d == digest(t) and d != digest(t + "x")
    assert t.encode() not in d


def test_cache_hit_until_its_time_then_gone() -> None:
    p = Principal(user="ann", role=Role.USER, token_id="t1")
    cache = TokenCache(ttl_s=60)
    cache.put("tok", p, _row())
    assert cache.get("tok") == p and cache.get("other") is None
    short = TokenCache(ttl_s=0)
    short.put("tok", p, _row())
    assert short.get("tok") is None


def test_cache_never_outlives_the_tokens_own_expiry() -> None:
    p = Principal(user="ann", role=Role.USER, token_id="t1")
    cache = TokenCache(ttl_s=60)
    cache.put("tok", p, _row(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert cache.get("tok") is None


def test_cache_is_bounded_and_clearable() -> None:
    p = Principal(user="ann", role=Role.USER, token_id="t1")
    cache = TokenCache(ttl_s=60, size=3)
    for i in range(5):
        cache.put(f"t{i}", p, _row())
    assert [cache.get(f"t{i}") for i in range(5)] == [None, None, p, p, p]
    cache.clear()
    assert cache.get("t4") is None


def test_admin_sees_everyone_a_user_only_themselves() -> None:
    assert Principal(user="ann", role=Role.USER, token_id="t").owner == "ann"
    assert Principal(user="root", role=Role.ADMIN, token_id="t").owner is None


@pytest.mark.parametrize(("text", "seconds"), [
    ("3600", 3600), ("90s", 90), ("30m", 1800), ("12h", 43_200), ("90d", 7_776_000),
    ("2w", 1_209_600), (" 1H ", 3600),
])
def test_token_lifetimes(text: str, seconds: int) -> None:
    assert parse_lifetime(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0d", "-5", "1y", "1.5h", "h", "10 d"])
def test_bad_token_lifetimes_say_what_works(text: str) -> None:
    with pytest.raises(ValueError, match="seconds, or N with s, m, h, d or w"):
        parse_lifetime(text)


@pytest.mark.parametrize(("headers", "refused"), [
    ({}, False),
    ({"Origin": "http://gw:8080"}, False),
    ({"Origin": "https://gw:8080"}, False),
    ({"Origin": "http://gw:8081"}, True),
    ({"Origin": "http://evil.example"}, True),
    ({"Origin": "null"}, True),
    ({"Sec-Fetch-Site": "cross-site"}, True),
    ({"Sec-Fetch-Site": "same-origin"}, False),
    ({"Sec-Fetch-Site": "none"}, False),
])
def test_cross_site(headers: dict[str, str], refused: bool) -> None:
    req = make_mocked_request("POST", "/api/v1/jobs", headers={"Host": "gw:8080", **headers})
    assert (cross_site(req) is not None) is refused
