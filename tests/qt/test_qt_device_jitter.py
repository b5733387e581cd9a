"""The jitter buffer, driven by hand: each ``pull`` is a sound-card callback."""

from __future__ import annotations

import numpy as np
import pytest

from clients.qt_device.jitter import BufferState, JitterBuffer

MS = 48  # samples per millisecond at 48 kHz


def ramp(start: int, n: int) -> np.ndarray:
    return (np.arange(start, start + n) % 30_000).astype(np.int16)


def test_holds_back_until_prefilled_then_plays_in_order() -> None:
    jitter = JitterBuffer(prefill_ms=80)
    jitter.push(ramp(0, 60 * MS))
    assert jitter.state is BufferState.PREFILLING
    assert not jitter.pull(10 * MS).any()  # silence, nothing consumed
    assert jitter.queued == 60 * MS

    jitter.push(ramp(60 * MS, 40 * MS))
    assert jitter.state is BufferState.PLAYING
    # Pulls straddle the 60 ms chunk boundary.
    out = np.concatenate([jitter.pull(7 * MS) for _ in range(10)] + [jitter.pull(30 * MS)])
    np.testing.assert_array_equal(out, ramp(0, 100 * MS))


def test_a_stream_shorter_than_the_prefill_still_plays_at_its_end() -> None:
    jitter = JitterBuffer(prefill_ms=80)
    jitter.push(ramp(1, 20 * MS))
    jitter.end()
    assert jitter.state is BufferState.PLAYING
    out = jitter.pull(30 * MS)
    np.testing.assert_array_equal(out[: 20 * MS], ramp(1, 20 * MS))
    assert not out[20 * MS :].any()
    assert jitter.state is BufferState.IDLE
    assert jitter.underruns == 0


def test_starving_mid_stream_pads_with_silence_and_rebuffers() -> None:
    jitter = JitterBuffer(prefill_ms=40)
    jitter.push(ramp(1, 40 * MS))
    out = jitter.pull(50 * MS)
    np.testing.assert_array_equal(out[: 40 * MS], ramp(1, 40 * MS))
    assert not out[40 * MS :].any()
    assert jitter.underruns == 1
    assert jitter.state is BufferState.PREFILLING
    jitter.push(ramp(1, 20 * MS))
    assert not jitter.pull(10 * MS).any()  # waits for the prefill again


def test_backlog_is_capped_by_dropping_the_oldest_audio() -> None:
    jitter = JitterBuffer(prefill_ms=20, max_ms=100)
    for i in range(15):
        jitter.push(ramp(i * 10 * MS, 10 * MS))
    assert jitter.queued == 100 * MS
    assert jitter.dropped == 50 * MS
    np.testing.assert_array_equal(jitter.pull(10 * MS), ramp(50 * MS, 10 * MS))


def test_end_then_new_stream_continues_without_a_gap() -> None:
    jitter = JitterBuffer(prefill_ms=20)
    jitter.push(ramp(0, 30 * MS))
    jitter.end()
    jitter.push(ramp(30 * MS, 30 * MS))
    np.testing.assert_array_equal(jitter.pull(60 * MS), ramp(0, 60 * MS))
    # The second stream has not ended, so running dry is an underrun.
    assert not jitter.pull(10 * MS).any()
    assert jitter.underruns == 1
    assert jitter.state is BufferState.PREFILLING


def test_idle_and_cleared_buffers_are_silent() -> None:
    jitter = JitterBuffer()
    assert jitter.state is BufferState.IDLE
    assert not jitter.pull(480).any()
    jitter.push(ramp(1, 200 * MS))
    jitter.clear()
    assert jitter.queued == 0
    assert not jitter.pull(480).any()
    jitter.end()
    assert jitter.state is BufferState.IDLE


@pytest.mark.parametrize(("prefill_ms", "max_ms"), [(-1, 100), (100, 100), (200, 100)])
def test_rejects_impossible_limits(prefill_ms: int, max_ms: int) -> None:
    with pytest.raises(ValueError):
        JitterBuffer(prefill_ms=prefill_ms, max_ms=max_ms)
