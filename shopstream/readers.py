"""Read event logs: JSON lines, CSV (a REES46 export loads unchanged) and Parquet.

Every reader yields `(where, Event | InvalidEvent)` so callers count and report bad
rows instead of stopping at the first one. `where` is "file:line" (or "file:row").
A column mapping renames an export's columns to ours: ``{"event_time": "ts"}``.
"""

from __future__ import annotations

import csv
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


def read_events(path: str | Path, columns: Mapping[str, str] | None = None) -> Iterator[Parsed]:
    """Dispatch on the file suffix (.jsonl/.json/.ndjson, .csv, .parquet)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"history file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return read_jsonl(path, columns)
    if suffix == ".csv":
        return read_csv(path, columns)
    if suffix == ".parquet":
        return read_parquet(path, columns)
    raise ValueError(f"{path}: unknown format {suffix!r} (use .jsonl, .csv or .parquet)")


def _renamer(columns: Mapping[str, str] | None):
    if not columns:
        return None
    theirs_to_ours = {theirs: ours for ours, theirs in columns.items()}
    return lambda record: {theirs_to_ours.get(k, k): v for k, v in record.items()}


def read_jsonl(path: Path, columns: Mapping[str, str] | None = None) -> Iterator[Parsed]:
    import msgspec

    rename = _renamer(columns)
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            where = f"{path.name}:{number}"
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


def read_csv(path: Path, columns: Mapping[str, str] | None = None) -> Iterator[Parsed]:
    rename = _renamer(columns)
    with open(path, newline="", encoding="utf-8", errors="strict") as handle:
        for number, row in enumerate(csv.DictReader(handle), 2):  # line 1 is the header
            where = f"{path.name}:{number}"
            if None in row:
                yield where, InvalidEvent("row", "more fields than the header")
                continue
            try:
                yield where, event_from_record(rename(row) if rename else row)
            except InvalidEvent as exc:
                yield where, exc


def read_parquet(path: Path, columns: Mapping[str, str] | None = None) -> Iterator[Parsed]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("reading Parquet needs pyarrow: pip install 'shopstream[parquet]'") from None
    rename = _renamer(columns)
    number = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            number += 1
            where = f"{path.name}:row {number}"
            try:
                yield where, event_from_record(rename(row) if rename else row)
            except InvalidEvent as exc:
                yield where, exc
