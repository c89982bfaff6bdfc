"""Read event logs: JSON lines, CSV (a REES46 export loads unchanged) and Parquet.

Every reader yields `(where, Event | InvalidEvent)` so callers count and report bad
rows instead of stopping at the first one. `where` is "file:line" (or "file:row").
No row stops a reader: a CSV field over the csv module's limit, invalid UTF-8 or JSON
nested too deeply is one bad row like any other. `max_bad_rows` makes a reader stop
with a clear error instead, once more rows than that were bad.
A column mapping renames an export's columns to ours: ``{"event_time": "ts"}``.
"""

from __future__ import annotations

import codecs
import csv
import re
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping, Union

from .events import MAX_EVENT_BYTES, Event, InvalidEvent, _refuse_duplicate_keys, decode_event, event_from_record

Parsed = tuple[str, Union[Event, InvalidEvent]]


def parse_column_map(text: str | None) -> dict[str, str]:
    """ "event_time=ts,user_id=uid" -> {"event_time": "ts", "user_id": "uid"}.

    >>> parse_column_map("event_time=ts, user_id=uid")
    {'event_time': 'ts', 'user_id': 'uid'}
    """
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        ours, sep, theirs = part.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ValueError(f"column mapping {part!r} is not OURS=THEIRS")
        mapping[ours.strip()] = theirs.strip()
    return mapping


def read_events(path: str | Path, columns: Mapping[str, str] | None = None,
                max_bad_rows: int | None = None) -> Iterator[Parsed]:
    """Dispatch on the file suffix (.jsonl/.json/.ndjson, .csv, .parquet)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"history file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = read_jsonl(path, columns)
    elif suffix == ".csv":
        rows = read_csv(path, columns)
    elif suffix == ".parquet":
        rows = read_parquet(path, columns)
    else:
        raise ValueError(f"{path}: unknown format {suffix!r} (use .jsonl, .csv or .parquet)")
    return rows if max_bad_rows is None else _at_most(rows, max_bad_rows, path)


def _at_most(rows: Iterator[Parsed], limit: int, path: Path) -> Iterator[Parsed]:
    """Stop with a clear error once more than `limit` rows were bad.

    >>> rows = iter([("f:1", InvalidEvent("price", "bad")), ("f:2", InvalidEvent("price", "bad"))])
    >>> list(_at_most(rows, 1, Path("f")))
    Traceback (most recent call last):
    ...
    ValueError: f: more than 1 bad row(s) (--max-bad-rows); the last, f:2: price: bad
    """
    bad = 0
    for where, parsed in rows:
        if isinstance(parsed, InvalidEvent):
            bad += 1
            if bad > limit:
                raise ValueError(f"{path}: more than {limit} bad row(s) (--max-bad-rows); the last, {where}: {parsed}")
        yield where, parsed


def _renamer(columns: Mapping[str, str] | None):
    if not columns:
        return None
    theirs_to_ours = {theirs: ours for ours, theirs in columns.items()}

    def rename(record: dict) -> dict:
        renamed = {theirs_to_ours.get(k, k): v for k, v in record.items()}
        if len(renamed) < len(record):   # e.g. "ts" renamed to event_time beside an event_time: which one?
            ours, theirs = next(((o, t) for t, o in theirs_to_ours.items()
                                 if t in record and o in record and o not in theirs_to_ours), ("row", "?"))
            raise InvalidEvent(ours, f"given twice: as itself and as {theirs!r} (the column mapping)")
        return renamed
    return rename


#: A JSON line is read at most this far (an event's limit, and room for "\r\n"): a longer one is one
#: bad row, skipped to its end without being held in memory.
_LINE_LIMIT = MAX_EVENT_BYTES + 2


def read_jsonl(path: Path, columns: Mapping[str, str] | None = None) -> Iterator[Parsed]:
    import msgspec

    rename = _renamer(columns)
    name = path.name   # (a property of the path: not looked up again for every line)
    with open(path, "rb") as lines:
        start = lines.read(_LINE_LIMIT)
        if b"\r" in start.rstrip(b"\r") and b"\n" not in start:   # (a CR at the very end: one line, cut)
            # Old Mac line ends: read as one line, every event was one bad row "trailing characters"
            raise ValueError(f"{path}: its lines end in a bare CR (\\r), not LF (\\n) as JSON Lines do: "
                             "convert them (e.g. tr '\\r' '\\n')")
        lines.seek(0)
        for number, line in enumerate(iter(lambda: lines.readline(_LINE_LIMIT), b""), 1):
            if len(line) == _LINE_LIMIT and not line.endswith(b"\n"):
                size = len(line) + _skip_line(lines)
                yield f"{name}:{number}", InvalidEvent("payload", f"{size} bytes exceeds the {MAX_EVENT_BYTES}-byte "
                                                                   "limit")
                continue
            if number == 1 and line.startswith(codecs.BOM_UTF8):   # some editors begin a file with one
                line = line[len(codecs.BOM_UTF8):]
            line = line.strip()
            if not line:
                continue
            where = f"{name}:{number}"
            try:
                if rename is None:
                    yield where, decode_event(line)
                else:
                    yield where, _mapped_event(line, rename)
            except InvalidEvent as exc:
                yield where, exc
            except msgspec.DecodeError as exc:
                yield where, InvalidEvent("payload", str(exc))
            except RecursionError:
                yield where, InvalidEvent("payload", "JSON nested too deeply")
            except (ValueError, TypeError) as exc:  # e.g. unhashable or odd values in a mapped row
                yield where, InvalidEvent("row", f"{type(exc).__name__}: {exc}")


def _skip_line(lines: BinaryIO) -> int:
    """Read past the rest of a line without keeping it; return how many bytes it held (its end aside)."""
    skipped = 0
    while True:
        chunk = lines.readline(1 << 16)
        skipped += len(chunk.rstrip(b"\r\n"))
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def _mapped_event(line: bytes, rename) -> Event:
    """A JSON line under a column mapping, held to `decode_event`'s size limit and duplicate-key check
    (a decoder keeps the last of a key given twice, silently)."""
    import msgspec

    if len(line) > MAX_EVENT_BYTES:
        raise InvalidEvent("payload", f"{len(line)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
    record = msgspec.json.decode(line)
    if not isinstance(record, dict):
        raise InvalidEvent("event", "not a JSON object")
    event = event_from_record(rename(record))
    _refuse_duplicate_keys(line, event)
    return event


#: A CSV record longer than this is skipped as one bad row without being held in memory
#: (the csv module's own limit, 128 KiB per field, still applies to the records read).
MAX_CSV_RECORD_CHARS = 1 << 20


def read_csv(path: Path, columns: Mapping[str, str] | None = None) -> Iterator[Parsed]:
    """CSV rows, each parsed on its own: `_csv_records` splits the file at the ends of records
    (quotes respected), so a bad record, even one the csv module gives up on mid-field, is one
    bad row, and the text inside its quotes can never be read as rows of its own. A header that
    names a column twice refuses the file (ValueError): which of the two is the value?"""
    rename = _renamer(columns)
    # surrogateescape: a byte that is not UTF-8 marks its row bad instead of ending the read;
    # utf-8-sig: a BOM (Excel writes one) is not part of the first column's name
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        at: dict = {"line": 0, "last": 0, "problem": None}   # the record the csv reader is on (its lines)

        def records():
            for line, last, text, problem in _csv_records(handle):
                at["line"], at["last"], at["problem"] = line, last, problem
                # a bad record is not parsed (one blank line keeps step); an unterminated one is, then judged
                yield "\n" if problem and problem is not UNTERMINATED else text

        reader = csv.reader(records())   # one record per item: an error ends with its record
        header: list[str] | None = None
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over the csv module's 128 KB limit: this row only
                yield f"{path.name}:{at['line']}", InvalidEvent("row", f"unreadable CSV: {exc}")
                continue
            where = f"{path.name}:{at['line']}"
            unterminated = at["problem"] is UNTERMINATED
            if at["problem"] and not unterminated:
                yield where, InvalidEvent("row", at["problem"])
                continue
            if not fields:
                continue  # a blank line
            if at["last"] > at["line"] and any("\n" in field or "\r" in field for field in fields):
                # No field of an event holds a line end: a stray quote joined rows into this one (a value
                # of one, the time of another), or the quoted text holds rows of its own: neither is read.
                yield where, InvalidEvent("row", f"a quoted value runs over line ends (lines {at['line']}-"
                                                 f"{at['last']}: an unbalanced quote?): none of them is read")
                continue
            if header is None:
                header = fields
                _check_header(header, rename, f"{path}:{at['line']}")
                continue
            if len(fields) > len(header):
                yield where, InvalidEvent("row", "more fields than the header")
                continue
            if unterminated and len(fields) < len(header):   # the file ends mid-record: cut short, not short
                yield where, InvalidEvent("row", TRUNCATED)
                continue
            row: dict[str, str | None] = dict(zip(header, fields))
            if len(fields) < len(header):
                row.update(dict.fromkeys(header[len(fields):]))
            if any(isinstance(v, str) and _has_surrogates(v) for v in row.values()):
                yield where, InvalidEvent("row", "invalid UTF-8")
                continue
            try:
                yield where, event_from_record(rename(row) if rename else row)
            except InvalidEvent as exc:
                yield where, exc


def _check_header(header: list[str], rename, where: str) -> None:
    """ValueError for a header naming a column twice, as written or once mapped (unnamed columns,
    e.g. of trailing commas, are never read)."""
    named = [name for name in header if name]
    twice = next((name for i, name in enumerate(named) if name in named[:i]), None)
    if twice is not None:
        raise ValueError(f"{where}: the header names column {twice!r} twice")
    if rename is not None:
        try:
            rename(dict.fromkeys(named))
        except InvalidEvent as exc:
            raise ValueError(f"{where}: the header gives column {exc}") from None


#: Why `_csv_records` gives a record no text.
TOO_LONG = f"unreadable CSV: a record over {MAX_CSV_RECORD_CHARS} characters"
TRUNCATED = "truncated: the file ends inside this record (no line end)"
#: Why a record is a quote never closed: the rest of the file, `{lines}` lines, was read as that record.
UNCLOSED = "a quote opened here is never closed: the file's {lines} remaining line(s) were this one record, unread"
#: The file's last record, without its line end: many files simply end so. Kept if it has every
#: column, else `TRUNCATED` (a file cut off mid-write); a last value cut short cannot be told.
UNTERMINATED = "no line end"


def _csv_records(lines) -> Iterator[tuple[int, int, str, str | None]]:
    r"""(first and last line numbers, record text, problem) for each CSV record: lines joined while a
    quoted field is open. A record over `MAX_CSV_RECORD_CHARS` is read to its end but not kept
    (`TOO_LONG`); a quote the file ends inside is `TRUNCATED` if it opened on the last line (a file cut
    off mid-write), else `UNCLOSED` (it took every later line); a last record without a line end is
    `UNTERMINATED` (the caller judges it by its columns).

    >>> list(_csv_records(['a,"b\n', 'c",d\n', 'x"y,z\n', 'cut,sho']))[:2]
    [(1, 2, 'a,"b\nc",d\n', None), (3, 3, 'x"y,z\n', None)]
    >>> list(_csv_records(['a,b\n', 'cut,sho']))[1][3] is UNTERMINATED
    True
    >>> list(_csv_records(['a,"b']))[0][3] == TRUNCATED
    True
    >>> print(list(_csv_records(['a,"b\n', 'c,d\n']))[0][3])
    a quote opened here is never closed: the file's 2 remaining line(s) were this one record, unread
    """
    parts: list[str] = []
    size, start, in_quotes = 0, 0, False
    for number, line in enumerate(lines, 1):
        if not in_quotes:
            start, parts, size = number, [], 0
        if size <= MAX_CSV_RECORD_CHARS:
            parts.append(line)
        size += len(line)
        in_quotes = _open_quote_after(line, in_quotes)
        if not in_quotes:   # only a file's last line can lack its line end
            yield start, number, "".join(parts), (TOO_LONG if size > MAX_CSV_RECORD_CHARS
                                                  else None if line.endswith(("\n", "\r")) else UNTERMINATED)
    if in_quotes:  # a quote never closed: the rest of the file was that one record
        yield start, number, "".join(parts), (TOO_LONG if size > MAX_CSV_RECORD_CHARS else TRUNCATED
                                              if number == start else UNCLOSED.format(lines=number - start + 1))


_FIELD = r'(?:"(?:[^"]|"")*"(?:[^",\r\n][^,\r\n]*)?|[^",\r\n][^,\r\n]*|)'
#: A line that is one whole record, quoted fields closed (the common case, checked in C).
_WHOLE_RECORD = re.compile(_FIELD + "(?:," + _FIELD + r")*\r?\n?")


def _open_quote_after(line: str, in_quotes: bool) -> bool:
    """Whether a quoted field is still open at the end of `line` (as the csv module reads it:
    a quote opens a field only at its start, and "" inside one is a quote)."""
    if not in_quotes and ('"' not in line or _WHOLE_RECORD.fullmatch(line)):
        return False
    i, n = 0, len(line)
    while i < n:
        if in_quotes:
            j = line.find('"', i)
            if j < 0:
                return True
            if line.startswith('"', j + 1):
                i = j + 2
                continue
            in_quotes = False
            i = j + 1
        elif line.startswith('"', i):
            in_quotes = True
            i += 1
            continue
        k = line.find(",", i)   # the rest of this field, to the next one's start
        if k < 0:
            return False
        i = k + 1
    return in_quotes


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_parquet(path: Path, columns: Mapping[str, str] | None = None) -> Iterator[Parsed]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("reading Parquet needs pyarrow: pip install 'shopstream[parquet]'") from None
    rename = _renamer(columns)
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:   # (pyarrow's ArrowInvalid is a ValueError that names no file)
        raise ValueError(f"{path}: not a readable Parquet file: {exc}") from None
    # a column named twice: which is the value? (pyarrow's rows keep the last, silently; as read_csv)
    _check_header(parquet.schema_arrow.names, rename, str(path))
    number = 0
    for batch in parquet.iter_batches():
        for row in _epoch_seconds(batch).to_pylist():
            number += 1
            where = f"{path.name}:row {number}"
            try:
                yield where, event_from_record(rename(row) if rename else row)
            except InvalidEvent as exc:
                yield where, exc


def _epoch_seconds(batch):
    """Timestamp-typed columns as seconds since the epoch (Arrow keeps them as UTC counts
    whatever their zone), so a time column typed as a timestamp reads like one in seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.Table.from_batches([batch])
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[field.type.unit]
            counts = table.column(i).cast(pa.int64()).cast(pa.float64(), safe=False)  # ns: past 2**53
            table = table.set_column(i, field.name, pc.divide(counts, per_second))
    return table
