"""The gateway's load limits as pure logic: the token bucket (time injected, no sleeps), the
per-key limiter, the stream slots, the page-size check and the settings that drive them."""

from __future__ import annotations

import pytest

from services.gateway.throttle import Bucket, RateLimiter, StreamSlots, Throttle, take
from services.gateway.validation import MAX_PAGE, RequestError, query_limit
from shared.db.pool import server_settings
from shared.errors import ConfigError, InfraError, PoolBusy
from shared.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_a_burst_through_then_refuses_with_the_wait() -> None:
    b = Bucket(tokens=3.0, updated=0.0)
    assert [take(b, 0.0, rate=2.0, burst=3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert take(b, 0.0, rate=2.0, burst=3) == pytest.approx(0.5)  # one token per 1/2 s
    assert take(b, 0.25, rate=2.0, burst=3) == pytest.approx(0.25)  # half a token there
    assert take(b, 0.5, rate=2.0, burst=3) == 0.0  # refilled: taken
    assert take(b, 0.5, rate=2.0, burst=3) == pytest.approx(0.5)


def test_a_refused_request_takes_nothing() -> None:
    b = Bucket(tokens=0.0, updated=0.0)
    for _ in range(100):
        assert take(b, 0.0, rate=1.0, burst=5) == pytest.approx(1.0)
    assert take(b, 1.0, rate=1.0, burst=5) == 0.0


def test_a_bucket_refills_up_to_its_burst_only() -> None:
    b = Bucket(tokens=0.0, updated=0.0)
    assert take(b, 3600.0, rate=100.0, burst=4) == 0.0
    assert b.tokens == pytest.approx(3.0)


def test_a_clock_that_goes_back_adds_nothing() -> None:
    b = Bucket(tokens=1.0, updated=10.0)
    assert take(b, 5.0, rate=1.0, burst=5) == 0.0
    assert take(b, 5.0, rate=1.0, burst=5) == pytest.approx(1.0)
    assert b.updated == 10.0


@pytest.mark.parametrize(("rate", "burst", "n", "allowed"), [
    (50.0, 200, 1000, 200),  # the defaults: the burst at once
    (0.5, 1, 10, 1),
    (10.0, 20, 20, 20),
])
def test_requests_at_one_instant(rate: float, burst: int, n: int, allowed: int) -> None:
    limiter = RateLimiter(rate, burst, clock=Clock())
    assert sum(limiter.take("k") == 0.0 for _ in range(n)) == allowed


def test_a_steady_rate_within_the_limit_is_never_refused() -> None:
    clock = Clock()
    limiter = RateLimiter(100.0, 10, clock=clock)
    for _ in range(10_000):  # 100 s at exactly the rate
        assert limiter.take("k") == 0.0
        clock.now += 0.01


def test_each_key_has_its_own_bucket_and_rate_zero_turns_limiting_off() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert limiter.take("b") == 0.0
    off = RateLimiter(0.0, 1, clock=clock)
    assert all(off.take("a") == 0.0 for _ in range(1000))


def test_the_least_recently_used_keys_are_forgotten_beyond_the_most() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock=clock, max_keys=2)
    limiter.take("a")
    limiter.take("b")
    limiter.take("a")  # a is the most recent now
    limiter.take("c")  # b goes
    assert limiter.take("a") > 0  # still remembered: empty
    assert limiter.take("b") == 0.0  # forgotten: a full bucket again


def test_check_raises_a_429_with_retry_after_in_whole_seconds() -> None:
    clock = Clock()
    limiter = RateLimiter(0.4, 1, clock=clock)
    limiter.check("k", who="per token")
    with pytest.raises(RequestError) as e:
        limiter.check("k", who="per token")
    assert (e.value.status, e.value.code, e.value.retry_after_s) == (429, "rate_limited", 3)
    assert "per token" in e.value.message and "0.4 a second" in e.value.message


def test_stream_slots_cap_each_token_then_the_process() -> None:
    slots = StreamSlots(total=3, per_token=2)
    with slots.hold("t1"), slots.hold("t1"):
        with pytest.raises(RequestError) as per_token, slots.hold("t1"):
            pass
        assert (per_token.value.status, per_token.value.code) == (429, "too_many_streams")
        assert per_token.value.retry_after_s is not None
        with slots.hold("t2"):
            assert slots.open == 3
            with pytest.raises(RequestError) as total, slots.hold("t3"):
                pass
            assert (total.value.status, total.value.code) == (503, "overloaded")
            assert total.value.retry_after_s is not None
    assert slots.open == 0


def test_a_stream_that_fails_gives_its_slot_back() -> None:
    slots = StreamSlots(total=1, per_token=1)
    with pytest.raises(ConnectionResetError), slots.hold("t"):
        raise ConnectionResetError
    with slots.hold("t"):
        assert slots.open == 1
    assert slots.open == 0


@pytest.mark.parametrize("value", ["0", "-1", str(MAX_PAGE + 1), "1000", "x", "1.5"])
def test_a_page_larger_than_the_largest_is_a_400_that_says_so(value: str) -> None:
    with pytest.raises(RequestError) as e:
        query_limit({"limit": value})
    assert e.value.status == 400
    assert f"from 1 to {MAX_PAGE}" in e.value.message and "next_cursor" in e.value.message


def test_page_sizes_within_the_cap() -> None:
    assert MAX_PAGE == 200
    assert query_limit({}) == 100
    assert query_limit({"limit": ""}) == 100
    assert query_limit({"limit": "200"}) == 200
    assert query_limit({"limit": "1"}) == 1


def test_the_limits_come_from_the_settings() -> None:
    s = Settings.from_env({
        "SCNS_RATE_LIMIT_RPS": "2.5", "SCNS_RATE_LIMIT_BURST": "7", "SCNS_MAX_STREAMS": "9",
        "SCNS_MAX_STREAMS_PER_TOKEN": "3", "SCNS_FOLLOW_MAX_S": "60",
        "SCNS_DB_ACQUIRE_TIMEOUT_S": "1.5", "SCNS_STATEMENT_TIMEOUT_S": "0"})
    t = Throttle.from_settings(s)
    assert (t.requests.rate, t.requests.burst, t.streams.total, t.streams.per_token,
            t.follow_max_s) == (2.5, 7, 9, 3, 60.0)
    assert (s.db_acquire_timeout_s, s.statement_timeout_s) == (1.5, 0.0)
    d = Settings.from_env({})
    assert (d.rate_limit_rps, d.rate_limit_burst, d.max_streams, d.max_streams_per_token,
            d.follow_max_s, d.db_acquire_timeout_s, d.statement_timeout_s) == (
        50.0, 200, 512, 16, 3600.0, 5.0, 30.0)
    assert Settings.from_env(s.as_env()) == s


@pytest.mark.parametrize(("env", "message"), [
    ({"SCNS_RATE_LIMIT_RPS": "-1"}, "SCNS_RATE_LIMIT_RPS='-1': must be zero or a positive"),
    ({"SCNS_RATE_LIMIT_BURST": "0"}, "SCNS_RATE_LIMIT_BURST='0': must be a positive integer"),
    ({"SCNS_MAX_STREAMS": "0"}, "SCNS_MAX_STREAMS='0'"),
    ({"SCNS_FOLLOW_MAX_S": "0"}, "SCNS_FOLLOW_MAX_S='0'"),
    ({"SCNS_DB_ACQUIRE_TIMEOUT_S": "0"}, "SCNS_DB_ACQUIRE_TIMEOUT_S='0'"),
    ({"SCNS_STATEMENT_TIMEOUT_S": "-5"}, "SCNS_STATEMENT_TIMEOUT_S='-5'"),
])
def test_bad_limits_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_pool_busy_is_a_retry_later_error_and_no_startup_parameter_is_a_timeout() -> None:
    from shared.db import UNAVAILABLE

    assert isinstance(PoolBusy("x"), UNAVAILABLE)
    assert isinstance(PoolBusy("x"), InfraError)
    # PgBouncer refuses startup parameters it does not know: the timeouts are SETs
    assert server_settings("scns-x") == {"application_name": "scns-x"}


def test_an_expensive_request_takes_its_cost_or_waits_for_it() -> None:
    b = Bucket(tokens=12.0, updated=0.0)
    assert take(b, 0.0, rate=2.0, burst=12, cost=11.0) == 0.0  # a full page: 1 + 10
    assert b.tokens == pytest.approx(1.0)
    assert take(b, 0.0, rate=2.0, burst=12, cost=11.0) == pytest.approx(5.0)  # 10 short, 2/s
    assert b.tokens == pytest.approx(1.0)  # refused: nothing taken
    assert take(b, 0.0, rate=2.0, burst=12) == 0.0  # a small one still passes
    # a cost above the burst is charged as the burst: it can pass, once the bucket is full
    full = Bucket(tokens=12.0, updated=0.0)
    assert take(full, 0.0, rate=2.0, burst=12, cost=100.0) == 0.0 and full.tokens == 0.0


async def test_a_refusal_waits_but_never_more_than_the_most_at_once() -> None:
    import asyncio

    from services.gateway.throttle import Tarpit

    pit = Tarpit(max_s=3600.0, most=2)
    held = [asyncio.create_task(pit.pause(5.0)) for _ in range(2)]
    await asyncio.sleep(0)
    assert pit.waiting == 2 and not any(t.done() for t in held)
    await asyncio.wait_for(pit.pause(5.0), 1.0)  # a third goes at once
    for t in held:
        t.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert pit.waiting == 0
    await asyncio.wait_for(Tarpit(max_s=0.0, most=10).pause(5.0), 1.0)  # off


async def test_listing_turns_let_the_most_run_and_a_long_wait_is_pool_busy() -> None:
    import asyncio

    from services.gateway.throttle import Turns

    turns = Turns(2, within_s=0.05)
    release = asyncio.Event()
    running = 0

    async def listing() -> None:
        nonlocal running
        async with turns.turn():
            running += 1
            await release.wait()

    held = [asyncio.create_task(listing()) for _ in range(2)]
    await asyncio.sleep(0)
    assert running == 2
    with pytest.raises(PoolBusy, match="2 run at once"):  # nobody leaves: the wait times out
        async with turns.turn():
            pass
    waiting = asyncio.create_task(listing())  # a third waits for a turn, and gets one
    await asyncio.sleep(0)
    assert running == 2
    release.set()
    await asyncio.gather(*held, waiting)
    assert running == 3
    with pytest.raises(RuntimeError):  # a listing that fails gives its turn back
        async with turns.turn():
            raise RuntimeError("boom")
    async with turns.turn(), turns.turn():
        pass
