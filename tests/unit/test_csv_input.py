"""CsvRecords: the CLI's CSV reader reads what csv.reader reads, and refuses a quote that is
never closed or a line that never ends quickly, in bounded memory, naming the line."""

from __future__ import annotations

import csv
import io
import time
import tracemalloc

import pytest

import dialguard.csv_input
from dialguard.csv_input import MAX_RECORD, CsvInputError, CsvRecords

SAMPLES = [
    "number\n+12122641234\n+12122641235\n",
    'a,b\r\nc,"d\r\ne"\rf,g\n\nh,"i""j"\r\n',
    'destination,reason\n+12122641234,"said ""stop"", twice"\n+12122641235,\n',
    'x,"multi\nline\nfield",y\nlast,line,without end',
    "\n\n,,\n+12122641234",
]


class Stream:
    """A file of ``size`` characters that is made as it is read: ``head``, then ``unit``
    repeated, never held whole."""

    def __init__(self, head: str, unit: str, size: int) -> None:
        self._head = head
        self._unit = unit
        self._left = size
        self._phase = 0
        self.read_chars = 0

    def read(self, n: int = -1) -> str:
        if self._left <= 0:
            return ""
        if self._head:
            out, self._head = self._head, ""
        else:
            want = max(1, min(n if n > 0 else 65536, self._left))
            phase = self._phase
            out = (self._unit * (want // len(self._unit) + 2))[phase : phase + want]
            self._phase = (phase + want) % len(self._unit)
        self._left -= len(out)
        self.read_chars += len(out)
        return out


@pytest.mark.parametrize("text", SAMPLES)
@pytest.mark.parametrize("block", [1, 2, 3, 7, 65536])
def test_records_and_line_numbers_are_those_of_csv_reader(
    text: str, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dialguard.csv_input, "BLOCK", block)
    expected = csv.reader(io.StringIO(text, newline=""))
    got = CsvRecords(io.StringIO(text, newline=""))
    pairs = []
    for fields in expected:
        pairs.append((fields, expected.line_num))
    assert [(fields, got.line_num) for fields in got] == pairs


def test_a_list_of_lines_is_read_as_before() -> None:
    lines = ["number\n", "+12122641234\n"]
    assert list(CsvRecords(lines)) == [["number"], ["+12122641234"]]


def refused(stream: Stream) -> tuple[CsvInputError, float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(CsvInputError) as caught:
            for _ in CsvRecords(stream):
                pass
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return caught.value, seconds, peak


def test_a_quote_never_closed_in_50_mb_is_refused_quickly_in_bounded_memory() -> None:
    stream = Stream('number\n+12122641234\n"+1212', "2641234 and on\n", 50 * 1024 * 1024)
    error, seconds, peak = refused(stream)
    assert error.line == 3
    assert "field longer than" in error.message
    assert stream.read_chars < 2 * MAX_RECORD, "refused without reading the rest"
    assert seconds < 1.0
    assert peak < 8 * 1024 * 1024, f"peak {peak:,} bytes"


def test_a_line_never_ended_in_50_mb_is_refused_quickly_in_bounded_memory() -> None:
    stream = Stream("number\n+12122641234\n", "1", 50 * 1024 * 1024)
    error, seconds, peak = refused(stream)
    assert error.line == 3
    assert "record longer than" in error.message
    assert stream.read_chars < 2 * MAX_RECORD
    assert seconds < 1.0
    assert peak < 8 * 1024 * 1024, f"peak {peak:,} bytes"


def test_a_record_of_many_quoted_fields_is_bounded_as_a_whole() -> None:
    # Each field is short, but the quotes carry the record over line after line.
    stream = Stream("number\n", '"a\nb",', 50 * 1024 * 1024)
    error, _, peak = refused(stream)
    assert error.line == 2
    assert "record longer than" in error.message
    assert peak < 8 * 1024 * 1024


def test_a_field_past_the_bound_on_one_line_is_refused() -> None:
    text = "number,reason\n+12122641234," + "x" * (200 * 1024) + "\n"
    with pytest.raises(CsvInputError) as caught:
        list(CsvRecords(io.StringIO(text, newline="")))
    assert caught.value.line == 2
