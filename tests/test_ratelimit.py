"""The pieces behind the login throttle and the rate-limited warnings, with a fake clock."""

from __future__ import annotations

import logging

import pytest
from fake_clock import FakeClock

from hub.addresses import host_block
from hub.core.ratelimit import FailureThrottle, RateLimitedLog
from hub.rpc.status import peer_address


def test_failures_are_free_up_to_the_burst_then_one_per_interval() -> None:
    clock = FakeClock(0.0)
    throttle = FailureThrottle(rate=0.5, burst=3, max_keys=10, clock=clock)
    assert throttle.wait("a") == 0
    assert [throttle.failed("a") for _ in range(3)] == [False, False, True]
    assert throttle.wait("a") == pytest.approx(2.0)
    assert throttle.wait("b") == 0  # another key is untouched
    clock.now += 1.5
    assert throttle.wait("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert throttle.wait("a") == 0


def test_the_throttle_remembers_at_most_max_keys_least_recent_out_first() -> None:
    clock = FakeClock(0.0)
    throttle = FailureThrottle(rate=0.5, burst=1, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        throttle.failed(key)
    throttle.failed("a")  # "a" is now the most recent
    throttle.failed("d")
    assert len(throttle) == 3
    assert throttle.wait("b") == 0  # forgotten
    assert throttle.wait("a") > 0 and throttle.wait("c") > 0 and throttle.wait("d") > 0


def test_a_rate_of_zero_turns_the_throttle_off() -> None:
    throttle = FailureThrottle(rate=0, burst=1, max_keys=3, clock=FakeClock(0.0))
    for _ in range(100):
        throttle.failed("a")
    assert throttle.wait("a") == 0 and len(throttle) == 0


def test_rate_limited_log_counts_what_it_leaves_out(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(0.0)
    limited = RateLimitedLog(logging.getLogger("test.ratelimit"), clock, rate=1.0, burst=2)
    for n in range(10):
        limited.warning("bad thing %d", n)
    clock.now += 1.0
    limited.warning("bad thing %d", 10)
    assert [r.getMessage() for r in caplog.records] == [
        "bad thing 0",
        "bad thing 1",
        "bad thing 10 (8 more left out of the log)",
    ]


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:192.0.2.7:51234", "192.0.2.7"),
        ("ipv6:%5B2001:db8:1:2:3:4:5:6%5D:443", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:ffff::1]:443", "2001:db8:1:2::/64"),
        ("ipv6:%5B::ffff:192.0.2.7%5D:9", "192.0.2.7"),  # IPv4 on a dual-stack socket
        ("unix:/run/hub.sock", "unix:/run/hub.sock"),
    ],
)
def test_peer_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address


@pytest.mark.parametrize(
    ("host", "block"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # the same host, another address
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("/run/hub.sock", "/run/hub.sock"),
    ],
)
def test_a_host_is_its_ipv4_address_or_its_ipv6_64(host: str, block: str) -> None:
    """The key of the TCP door's per-peer connection limit (and the login throttle's)."""
    assert host_block(host) == block
