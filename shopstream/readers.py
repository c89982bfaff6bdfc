"""Read event logs: JSON lines, CSV (a REES46 export loads unchanged) and Parquet.

Every reader yields `(where, Event | InvalidEvent)` so callers count and report bad
rows instead of stopping at the first one. `where` is "file:line" (or "file:row").
No row stops a reader: a CSV field over the csv module's limit, invalid UTF-8 or JSON
nested too deeply is one bad row like any other. `max_bad_rows` makes a reader stop
with a clear error instead, once more rows than that were bad.
A column mapping renames an export's columns to ours: ``{"event_time": "ts"}``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator, Mapping, Union

from .events import Event, InvalidEvent, decode_event, event_from_record

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
    return lambda record: {theirs_to_ours.get(k, k): v for k, v in record.items()}


def read_jsonl(path: Path, columns: Mapping[str, str] | None = None) -> Iterator[Parsed]:
    import msgspec

    rename = _renamer(columns)
    name = path.name   # (a property of the path: not looked up again for every line)
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            where = f"{name}:{number}"
            try:
                if rename is None:
                    yield where, decode_event(line)
                else:
                    record = msgspec.json.decode(line)
                    if not isinstance(record, dict):
                        raise InvalidEvent("event", "not a JSON object")
                    yield where, event_from_record(rename(record))
            except InvalidEvent as exc:
                yield where, exc
            except msgspec.DecodeError as exc:
                yield where, InvalidEvent("payload", str(exc))
            except RecursionError:
                yield where, InvalidEvent("payload", "JSON nested too deeply")
            except (ValueError, TypeError) as exc:  # e.g. unhashable or odd values in a mapped row
                yield where, InvalidEvent("row", f"{type(exc).__name__}: {exc}")


#: A CSV record longer than this is skipped as one bad row without being held in memory
#: (the csv module's own limit, 128 KiB per field, still applies to the records read).
MAX_CSV_RECORD_CHARS = 1 << 20


def read_csv(path: Path, columns: Mapping[str, str] | None = None) -> Iterator[Parsed]:
    """CSV rows, each parsed on its own: `_csv_records` splits the file at the ends of records
    (quotes respected), so a bad record, even one the csv module gives up on mid-field, is one
    bad row, and the text inside its quotes can never be read as rows of its own."""
    rename = _renamer(columns)
    # surrogateescape: a byte that is not UTF-8 marks its row bad instead of ending the read
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        at = {"line": 0, "too_long": False}   # the record the csv reader is on

        def records():
            for line, text in _csv_records(handle):
                at["line"], at["too_long"] = line, text is None
                yield "\n" if text is None else text

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
            if at["too_long"]:
                yield where, InvalidEvent("row", f"unreadable CSV: a record over {MAX_CSV_RECORD_CHARS} characters")
                continue
            if not fields:
                continue  # a blank line
            if header is None:
                header = fields
                continue
            if len(fields) > len(header):
                yield where, InvalidEvent("row", "more fields than the header")
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


def _csv_records(lines) -> Iterator[tuple[int, str | None]]:
    r"""(first line number, record text) for each CSV record: lines joined while a quoted field
    is open. A record over `MAX_CSV_RECORD_CHARS` comes as None, read to its end but not kept.

    >>> list(_csv_records(['a,"b\n', 'c",d\n', 'x"y,z\n']))
    [(1, 'a,"b\nc",d\n'), (3, 'x"y,z\n')]
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
        if not in_quotes:
            yield start, "".join(parts) if size <= MAX_CSV_RECORD_CHARS else None
    if in_quotes:  # a quote never closed: the rest of the file was that one record
        yield start, "".join(parts) if size <= MAX_CSV_RECORD_CHARS else None


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
    number = 0
    for batch in pq.ParquetFile(path).iter_batches():
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
