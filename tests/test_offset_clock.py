"""The test clock of real grantbot processes (GRANTBOT_CLOCK_OFFSET_FILE): every move of it is seen whole."""

from __future__ import annotations

import threading

from tests.support import advance_clock_offset, read_clock_offset, write_clock_offset


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
