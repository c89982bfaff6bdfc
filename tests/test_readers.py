"""Readers of history files: a bad row is one bad row, counted with where and why; never
the end of the read (unless --max-bad-rows says so)."""

import json

import pytest

from shopstream.events import InvalidEvent
from shopstream.readers import read_events

HEADER = "event_time,event_type,product_id,user_id,user_session,price\n"
ROW = "2026-01-01 00:00:{:02d} UTC,view,{},7,s1,9.99\n"


def test_a_huge_field_and_invalid_utf8_in_a_csv_are_bad_rows_and_the_rest_is_read(tmp_path):
    path = tmp_path / "history.csv"
    with open(path, "wb") as out:
        out.write(HEADER.encode())
        out.write(ROW.format(1, 1).encode())                                         # line 2
        out.write(f'2026-01-01 00:00:02 UTC,view,"{"x" * 140_000}",7,s1,1\n'.encode())  # line 3
        out.write(ROW.format(3, 3).encode())                                         # line 4
        out.write(b"2026-01-01 00:00:04 UTC,view,\xff\xfe,7,s1,1\n")                 # line 5
        out.write(ROW.format(5, 5).encode())                                         # line 6
    rows = list(read_events(path))
    good = [where for where, parsed in rows if not isinstance(parsed, InvalidEvent)]
    bad = {where: str(parsed) for where, parsed in rows if isinstance(parsed, InvalidEvent)}
    assert good == ["history.csv:2", "history.csv:4", "history.csv:6"]
    assert bad == {"history.csv:3": "row: unreadable CSV: field larger than field limit (131072)",
                   "history.csv:5": "row: invalid UTF-8"}


def test_deeply_nested_json_with_a_column_mapping_is_a_bad_row(tmp_path):
    path = tmp_path / "history.jsonl"
    good = {"ts": 1.77e9, "event_type": "view", "product_id": 1, "user_id": 2, "user_session": "s"}
    with open(path, "w") as out:
        out.write(json.dumps(good) + "\n")
        out.write('{"ts": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
        out.write(json.dumps(good) + "\n")
    rows = list(read_events(path, {"event_time": "ts"}))
    assert [isinstance(parsed, InvalidEvent) for _, parsed in rows] == [False, True, False]
    assert rows[1][0] == "history.jsonl:2"


def test_max_bad_rows_stops_with_a_clear_error(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(HEADER + ROW.format(1, 1) + "garbage,view,1,1,s,1\n" * 3 + ROW.format(2, 2))
    assert len(list(read_events(path, max_bad_rows=3))) == 5
    with pytest.raises(ValueError, match=r"history.csv: more than 2 bad row\(s\) \(--max-bad-rows\); "
                                         r"the last, history.csv:5: event_time"):
        list(read_events(path, max_bad_rows=2))


@pytest.mark.slow
def test_bootstrap_skips_bad_rows_or_stops_at_max_bad_rows(tmp_path):
    import subprocess
    import sys

    from shopstream.generator import generate, write_jsonl

    path = tmp_path / "history.jsonl"
    write_jsonl(generate(3000, seed=3), path)
    with open(path, "ab") as out:  # two bad rows at the end: invalid UTF-8, and nesting 100,000 deep
        out.write(b'{"event_time": "\xff\xfe"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    cli = [sys.executable, "-m", "cli", "bootstrap", "--history", str(path), "--no-progress",
           "--model", "logreg"]
    ok = subprocess.run(cli + ["--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "events: 3000 valid of 3002 rows, 2 malformed" in ok.stdout
    stop = subprocess.run(cli + ["--out", str(tmp_path / "b"), "--max-bad-rows", "1"], capture_output=True,
                          text=True, timeout=300)
    assert stop.returncode == 2 and "more than 1 bad row(s) (--max-bad-rows); the last, history.jsonl:3002" \
        in stop.stderr


def test_a_quoted_field_over_the_limit_hides_no_rows_and_loses_none(tmp_path):
    """The csv module gives up on an oversized field mid-field; read on from there, the rows
    written inside the quotes became events and the next real row was lost."""
    path = tmp_path / "history.csv"
    inside = "".join(f"2026-01-01 00:01:{i:02d} UTC,purchase,666,7,s1,1\n" for i in range(5))
    with open(path, "w") as out:
        out.write(HEADER + ROW.format(1, 1))                                          # line 2
        out.write(f'2026-01-01 00:00:02 UTC,view,"{"x" * 140_000}\n{inside}",7,s1,1\n')  # lines 3-9
        out.write(ROW.format(3, 3))                                                   # line 10
    rows = list(read_events(path))
    assert [(where, type(parsed).__name__) for where, parsed in rows] == [
        ("history.csv:2", "Event"), ("history.csv:3", "InvalidEvent"), ("history.csv:10", "Event")]
    assert [parsed.event_type for _, parsed in rows if not isinstance(parsed, InvalidEvent)] == ["view", "view"]


def test_a_csv_record_past_a_mebibyte_is_skipped_without_being_held(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(HEADER + '2026-01-01 00:00:02 UTC,view,"' + "y\n" * 600_000 + '",7,s1,1\n' + ROW.format(3, 3))
    rows = list(read_events(path))
    assert [where for where, _ in rows] == ["history.csv:2", "history.csv:600003"]
    assert str(rows[0][1]) == "row: unreadable CSV: a record over 1048576 characters"


@pytest.mark.parametrize("unit, zone", [("s", None), ("ms", "UTC"), ("us", None), ("ns", "Europe/Paris")])
def test_a_parquet_time_column_typed_as_a_timestamp_is_read(tmp_path, unit, zone):
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    when = dt.datetime(2026, 1, 1, 12, 30, 15, tzinfo=dt.timezone.utc)
    times = pa.array([when if zone else when.replace(tzinfo=None)] * 2, type=pa.timestamp(unit, tz=zone))
    table = pa.table({"event_time": times, "event_type": ["view", "cart"], "product_id": [1, 2],
                      "user_id": [7, 7], "user_session": ["s", "s"]})
    pq.write_table(table, tmp_path / "history.parquet")
    rows = list(read_events(tmp_path / "history.parquet"))
    assert [type(parsed).__name__ for _, parsed in rows] == ["Event", "Event"], rows
    assert {parsed.event_time for _, parsed in rows} == {when.timestamp()}


def test_a_parquet_file_naming_a_column_twice_or_not_parquet_is_refused_naming_it(tmp_path):
    """pyarrow's rows kept the last of two columns of one name, silently (a CSV header doing the
    same refuses its file); a file that is not Parquet said "magic bytes not found" without its name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "history.parquet"
    table = pa.Table.from_arrays([pa.array([1.77e9]), pa.array(["view"]), pa.array(["p"]), pa.array(["u"]),
                                  pa.array(["s"]), pa.array([1.0]), pa.array([1e9])],
                                 names=["event_time", "event_type", "product_id", "user_id", "user_session",
                                        "price", "price"])
    pq.write_table(table, path)
    with pytest.raises(ValueError, match="history.parquet: the header names column 'price' twice"):
        list(read_events(path))
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"history.parquet: not a readable Parquet file: .*"):
        list(read_events(path))


def test_a_jsonl_file_whose_lines_end_in_a_bare_cr_is_refused_saying_so(tmp_path):
    """Read as one line, every event in it was one bad row ("trailing characters")."""
    path = tmp_path / "history.jsonl"
    line = json.dumps({"event_time": 1.77e9, "event_type": "view", "product_id": 1, "user_id": 2,
                       "user_session": "s"})
    path.write_bytes(((line + "\r") * 50).encode())
    with pytest.raises(ValueError, match=r"history.jsonl: its lines end in a bare CR \(\\r\), not LF"):
        list(read_events(path))
    path.write_bytes(((line + "\r\n") * 50).encode())   # CRLF: read as ever
    assert len(list(read_events(path))) == 50


GOOD = {"ts": 1.77e9, "event_type": "view", "product_id": 1, "user_id": 2, "user_session": "s"}


def test_a_key_given_twice_is_a_bad_row_under_a_column_mapping_too(tmp_path):
    """A mapping read each line with a raw decode: the last of two keys won, and no size limit held."""
    path = tmp_path / "history.jsonl"
    line = json.dumps(GOOD)[:-1]
    big = f'{line}, "brand": "{"b" * 70_000}"}}'
    path.write_text(f'{line}, "price": 1, "price": 1e9}}\n'                        # a key twice
                    f'{line}, "event_time": 1.8e9}}\n'                              # ts and event_time: which?
                    f"{big}\n" + json.dumps(GOOD) + "\n")                           # over the 64 KiB limit
    rows = [parsed for _, parsed in read_events(path, {"event_time": "ts"})]
    assert [str(parsed) for parsed in rows[:3]] == [
        "price: duplicate key in a JSON object", "event_time: given twice: as itself and as 'ts' (the column mapping)",
        f"payload: {len(big)} bytes exceeds the 65536-byte limit"]
    assert not isinstance(rows[3], InvalidEvent)


def test_a_csv_header_naming_a_column_twice_refuses_the_file(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(HEADER.strip() + ",price\n" + ROW.format(1, 1).strip() + ",1e9\n")   # the last price won
    with pytest.raises(ValueError, match=f"^{path}:1: the header names column 'price' twice$"):
        list(read_events(path))
    path.write_text(HEADER.replace("event_time", "ts").strip() + ",event_time\n" + ROW.format(1, 1))
    with pytest.raises(ValueError, match="the header gives column event_time: given twice: as itself and as 'ts'"):
        list(read_events(path, {"event_time": "ts"}))


def test_a_bom_is_not_part_of_the_first_column(tmp_path):
    """A CSV that begins with a BOM lost every row (its first column was "\\ufeffevent_time")."""
    csv_path, jsonl_path = tmp_path / "history.csv", tmp_path / "history.jsonl"
    csv_path.write_bytes(b"\xef\xbb\xbf" + (HEADER + ROW.format(1, 1) + ROW.format(2, 2)).encode())
    jsonl_path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n").encode())
    for path, columns in ((csv_path, None), (jsonl_path, {"event_time": "ts"})):
        assert [type(parsed).__name__ for _, parsed in read_events(path, columns)] == ["Event", "Event"]


def test_no_valid_events_says_why_the_rows_were_refused(tmp_path):
    from offline.bootstrap import bootstrap

    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n" + "[]\n")   # no event_time: not mapped
    with pytest.raises(ValueError, match=r"no valid events among 3 rows; most often event: Object missing required "
                                         r"field `event_time` \(2 rows\), e\.g\. history\.jsonl:1: event: Object"):
        bootstrap(path, tmp_path / "out", progress=False)


def test_a_stray_quote_in_a_csv_is_a_bad_row_that_names_the_lines_it_took(tmp_path):
    """A value written with a quote at its start and none at its end ("12 inch) opens a quoted field
    the csv module reads on across line ends. Two such quotes joined three rows into one valid event
    (one row's time, another's user and price); one never closed took the rest of the file as one
    row, reported as a file cut off mid-write. Now each is one bad row saying which lines it took;
    the rows before and after are read."""
    path = tmp_path / "history.csv"
    rows = [ROW.format(i, i) for i in range(1, 7)]
    stray = [row.replace(",view,", ',view,"12 inch', 1) if i in (2, 4) else row for i, row in enumerate(rows)]
    path.write_text(HEADER + "".join(stray))
    read = list(read_events(path))
    assert [where for where, parsed in read if not isinstance(parsed, InvalidEvent)] == \
        ["history.csv:2", "history.csv:3", "history.csv:7"]
    assert [(where, str(parsed)) for where, parsed in read if isinstance(parsed, InvalidEvent)] == [
        ("history.csv:4", "row: a quoted value runs over line ends (lines 4-6: an unbalanced quote?): none of "
                          "them is read")]
    path.write_text(HEADER + "".join(stray[:4]) + "".join(rows[4:]))   # one quote, never closed
    read = list(read_events(path))
    assert len(read) == 3 and all(not isinstance(parsed, InvalidEvent) for _, parsed in read[:2])
    assert read[2][0] == "history.csv:4" and str(read[2][1]) == (
        "row: a quote opened here is never closed: the file's 4 remaining line(s) were this one record, unread")


def test_a_csv_cut_off_mid_record_counts_its_last_row_as_truncated(tmp_path):
    """A file cut off mid-write: its last record lacks columns (read as a short row, padded with
    nulls, it was an event), or ends inside a quoted field. A last record with every column and no
    line end is how many files simply end: kept."""
    path = tmp_path / "history.csv"
    path.write_text(HEADER + ROW.format(1, 1) + ROW.format(2, 2)[:-7])   # "...,7,s1,9.99" cut to "...,7"
    rows = list(read_events(path))
    assert [(where, str(parsed)) for where, parsed in rows[1:]] == [
        ("history.csv:3", "row: truncated: the file ends inside this record (no line end)")]
    path.write_text(HEADER + ROW.format(1, 1) + '2026-01-01 00:00:02 UTC,view,"2')   # inside a quoted field
    assert str(list(read_events(path))[1][1]) == "row: truncated: the file ends inside this record (no line end)"
    path.write_text(HEADER + ROW.format(1, 1) + ROW.format(2, 2)[:-1])   # complete, no final line end
    assert [parsed.price for _, parsed in read_events(path)] == [9.99, 9.99]


def test_a_huge_jsonl_line_is_one_bad_row_never_held_whole(tmp_path):
    import tracemalloc

    path = tmp_path / "history.jsonl"
    with open(path, "w") as out:
        out.write(json.dumps({**GOOD, "brand": "x" * 8_000_000}) + "\n" + json.dumps(GOOD) + "\n")
    tracemalloc.start()
    try:
        rows = list(read_events(path, {"event_time": "ts"}))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(where, type(parsed).__name__) for where, parsed in rows] == [
        ("history.jsonl:1", "InvalidEvent"), ("history.jsonl:2", "Event")]
    assert str(rows[0][1]).startswith("payload: 8000") and "exceeds the 65536-byte limit" in str(rows[0][1])
    assert peak < 1_000_000, peak   # the line is 8 MB
