"""The test clock of real grantbot processes (GRANTBOT_CLOCK_OFFSET_FILE): every move of it is seen, and a file
caught mid-rewrite never sends a process back to the real time."""

from __future__ import annotations

import os
import threading
import time

from bot.domain.clock import OffsetFileClock
from tests.support import advance_clock_offset, read_clock_offset, write_clock_offset


def offset_of(clock: OffsetFileClock) -> float:
    return clock.now().timestamp() - time.time()


def test_a_rewrite_within_one_modification_time_tick_is_seen(tmp_path):
    path = tmp_path / "clock-offset"
    path.write_text("10")
    clock = OffsetFileClock(path)
    assert abs(offset_of(clock) - 10) < 1
    tick = path.stat().st_mtime_ns
    path.write_text("90")  # same size, and (below) the same mtime: as two writes within one tick of the file system
    os.utime(path, ns=(tick, tick))
    assert abs(offset_of(clock) - 90) < 1


def test_an_empty_or_unreadable_file_keeps_the_last_offset(tmp_path):
    path = tmp_path / "clock-offset"
    path.write_text("3600")
    clock = OffsetFileClock(path)
    assert abs(offset_of(clock) - 3600) < 1
    for caught_mid_write in ("", "\n", "36-", "nan"):
        path.write_text(caught_mid_write)
        assert abs(offset_of(clock) - 3600) < 1, repr(caught_mid_write)
    path.write_text("7200\n")
    assert abs(offset_of(clock) - 7200) < 1


def test_a_missing_file_means_no_offset(tmp_path):
    assert abs(offset_of(OffsetFileClock(tmp_path / "clock-offset"))) < 1


def test_a_process_reading_while_the_tests_advance_the_clock_never_sees_it_go_back(tmp_path):
    """The tests' writer replaces the file atomically: a reader sees every offset whole, in order."""
    path = tmp_path / "clock-offset"
    write_clock_offset(path, 0)
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(500):
            advance_clock_offset(path, 1)
    finally:
        done.set()
        reader.join()
    offsets = [float(text) for text in seen]  # no empty or partial text: float() would raise
    assert len(offsets) > 50 and offsets == sorted(offsets)
    assert read_clock_offset(path) == 500
    assert [p.name for p in tmp_path.iterdir()] == ["clock-offset"]  # no temporary file left behind
