"""The canonical shop event, and the one place where raw input becomes an `Event`.

Events are modelled on the public REES46 e-commerce dataset. Both stages call
`decode_event` (JSON bytes, e.g. a Kafka message value) or `event_from_record`
(a dict, e.g. a CSV row); anything wrong raises `InvalidEvent` naming the field,
the value and the reason, so it can be counted or dead-lettered.

>>> e = decode_event(b'{"event_time": "2019-10-01 00:00:05 UTC", "event_type": "view",'
...                  b' "product_id": 44600062, "user_id": 541312140, "user_session": "s1",'
...                  b' "price": 35.79}')
>>> e.event_time, e.product_id, e.price
(1569888005.0, '44600062', 35.79)
>>> decode_event(b'{"event_time": 1, "event_type": "view"}')
Traceback (most recent call last):
...
shopstream.events.InvalidEvent: event: Object missing required field `product_id`
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Optional, Union, cast

import msgspec

EVENT_TYPES = frozenset({"view", "cart", "remove_from_cart", "purchase"})
# Which of them open a prediction, and what makes a label: the label rule, `labels.py`.
MAX_EVENT_BYTES = 64 * 1024
# Times outside this range are typos or unit errors (e.g. milliseconds), not shop events.
MIN_EVENT_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp()
MAX_EVENT_TIME = datetime(2100, 1, 1, tzinfo=timezone.utc).timestamp()
MAX_ID_CHARS = 256
MAX_FEATURES = 256
#: Characters in a category code, brand, platform, channel or feature name: each is kept in the
#: features' tables and vocabularies (64 KB codes could hold about 600 MB in the category memo at its cap).
MAX_NAME_CHARS = 256
#: Prices above this are unit errors or attacks (a price of 1.7e308 turned a model's weights to NaN).
MAX_PRICE = 1e9
#: Raw feature values beyond +-this are dead-lettered: a model's dot products stay finite.
MAX_FEATURE_ABS = 1e9
#: Default of --max-future-skew: how far ahead of its record time an event_time may be.
MAX_FUTURE_SKEW = 300.0


class InvalidEvent(ValueError):
    """An input that is not a valid event: `field` and `value` say where, the message why."""

    def __init__(self, field: str, reason: str, value: object = None):
        self.field = field
        self.reason = reason
        self.value = value
        shown = "" if value is None else f" (value {_short(value)})"
        super().__init__(f"{field}: {reason}{shown}")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# What the decoder checks in C as it reads (msgspec constraints): the ranges and lengths `validate`
# checks in Python. A constraint refused is never the message: the event is read again without them
# and `validate` says what is wrong, as before (`_explain`). Python code building an `Event` is not
# checked by them (msgspec checks only what it decodes or converts): `validate` stays the rule.
_Id = Union[int, Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]]
_Seconds = Annotated[float, msgspec.Meta(ge=MIN_EVENT_TIME, lt=MAX_EVENT_TIME)]
_Price = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_PRICE)]
_Feature = Union[Annotated[float, msgspec.Meta(ge=-MAX_FEATURE_ABS, le=MAX_FEATURE_ABS)], str]
_Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]
# A feature name's length is checked in Python (`_checked`), not by a constraint on the dict's keys: a
# constrained key turns msgspec's cache of short keys off, so each event would bring its own copies of
# the names, and River's dicts (the scaler's, the weights) compare a new copy by its characters on every
# lookup: River's calls on 12 raw features ran about 20% slower so (BENCHMARKS.md, stop 45).
_Features = Annotated[dict[str, _Feature], msgspec.Meta(max_length=MAX_FEATURES)]


class Event(msgspec.Struct, gc=False):
    """One click or purchase. After validation `event_time` is epoch seconds (float)
    and ids are strings."""

    event_time: Union[_Seconds, str]
    event_type: str
    product_id: _Id
    user_id: _Id
    user_session: _Id
    event_id: Optional[_Id] = None
    category_code: Optional[_Name] = None
    brand: Optional[_Name] = None
    price: Optional[_Price] = None
    platform: Optional[_Name] = None
    channel: Optional[_Name] = None
    features: Optional[_Features] = None
    label: Optional[bool] = None


class _UncheckedEvent(msgspec.Struct, gc=False):
    """`Event` without the constraints: what an event the constraints refused is read as, for
    `validate` to say why (`_explain`). The same fields, types and defaults as `Event`'s, less
    the `Annotated` constraints (tests/test_events.py holds them to that)."""

    event_time: Union[float, str]
    event_type: str
    product_id: Union[int, str]
    user_id: Union[int, str]
    user_session: Union[int, str]
    event_id: Optional[Union[int, str]] = None
    category_code: Optional[str] = None
    brand: Optional[str] = None
    price: Optional[float] = None
    platform: Optional[str] = None
    channel: Optional[str] = None
    features: Optional[dict[str, Union[float, str]]] = None
    label: Optional[bool] = None


_decoder = msgspec.json.Decoder(Event)
_unchecked_decoder = msgspec.json.Decoder(_UncheckedEvent)
_encoder = msgspec.json.Encoder()


def decode_event(data: bytes, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """JSON bytes -> validated `Event`, or `InvalidEvent`."""
    if not data:
        raise InvalidEvent("payload", "empty message")
    if len(data) > max_bytes:
        raise InvalidEvent("payload", f"{len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        event = _read(_decoder, data)
    except msgspec.ValidationError:   # a type or a constraint: read it again, for the precise reason
        return _explain(data)
    _refuse_duplicate_keys(data, event)
    return _checked(event)


def _read(decoder: msgspec.json.Decoder, data: bytes):
    """`decoder.decode(data)`; JSON that is not well formed is an `InvalidEvent` (a type or a
    constraint refused stays msgspec's `ValidationError`)."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError as exc:
        reason = str(exc)
        if not _is_utf8(data):
            reason = "invalid UTF-8"
        raise InvalidEvent("payload", reason) from None
    except UnicodeDecodeError as exc:  # msgspec raises it for bad UTF-8 inside a string
        raise InvalidEvent("payload", f"invalid UTF-8 at byte {exc.start}") from None
    except RecursionError:
        raise InvalidEvent("payload", "JSON nested too deeply") from None


def _checked(event: Event) -> Event:
    """`validate` for an event msgspec decoded or converted: it checked the ranges and lengths
    (see `Event`), so what is left is the event type, a time given as a string and ids given
    as numbers, and the length of feature names (see `_Features`)."""
    features = event.features
    if features and max(map(len, features)) > MAX_NAME_CHARS:
        return validate(event)   # it says which name and why
    if event.event_type not in EVENT_TYPES:
        raise InvalidEvent("event_type", f"must be one of {sorted(EVENT_TYPES)}", event.event_type)
    if event.event_time.__class__ is not float:
        event.event_time = parse_event_time(event.event_time)
    if (event.product_id.__class__ is not str or event.user_id.__class__ is not str
            or event.user_session.__class__ is not str
            or not (event.event_id is None or event.event_id.__class__ is str)):
        for name in _ID_FIELDS:
            _check_id(event, name)
    return event


def _explain(data: bytes) -> Event:
    """An event the decoder refused: read without the constraints, checked as `validate` checks,
    so the error says what, where and why (a type error is msgspec's). Gives the event if the
    rules let it through (the constraints mirror the rules; should they ever differ, the rules
    win)."""
    try:
        unchecked = _read(_unchecked_decoder, data)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(*_split_msgspec_error(str(exc))) from None
    event = Event(**msgspec.structs.asdict(unchecked))
    _refuse_duplicate_keys(data, event)
    return validate(event)


_WHITESPACE = b" \t\n\r"


def _refuse_duplicate_keys(data: bytes, event: Event) -> None:
    """InvalidEvent for an object with a key twice: decoders keep the last silently, so
    `{"price": 1, "price": 1e9}` would read as what a reviewer of the first half did not see.

    Fast paths (C-level counts). Every member of every object puts one colon in the bytes, and a
    string may hold more; a key given twice is two members but one key of the event. So as many
    colons as keys the event holds means no key repeats (nor any null, unknown field or colon in a
    string). Else, as many `":` as keys and no space before a colon means the same (a time given as
    text holds colons). Anything else (nulls, unknown fields, `":` inside a string, spaced JSON)
    gets the exact check."""
    values = msgspec.structs.astuple(event)
    keys = len(values) - values.count(None) + (len(event.features) if event.features else 0)
    # (A time given as text holds colons: skip the first count. One byte is counted by a plain loop,
    # 2.5x cheaper than `":`.)
    if event.event_time.__class__ is not str and data.count(b":") == keys:
        return
    # Whitespace before a colon is valid JSON and hides a key from the count. Compact JSON has no
    # whitespace outside its strings: one C pass that drops none is 5x cheaper than 4 searches.
    if data.count(b'":') == keys and (len(data.translate(None, _WHITESPACE)) == len(data) or not (
            b" :" in data or b"\t:" in data or b"\n:" in data or b"\r:" in data)):
        return
    key = repeated_key(data)
    if key is not None:
        raise InvalidEvent(key[:80], "duplicate key in a JSON object")


class _Repeated(Exception):
    """A key given twice (`repeated_key`'s way out of the parse)."""


def repeated_key(data: bytes) -> Optional[str]:
    """The first key given twice in one object of the JSON `data`, else None (None too for what
    is not JSON: its decoder says why). The exact check behind `_refuse_duplicate_keys`, and the
    scoring API's (stream/score_codec.py).

    >>> repeated_key(b'{"price": 1, "f": {"a": 1}, "price": 1e9}'), repeated_key(b'{"a": {"a": 1}}')
    ('price', None)
    """
    import json

    def pairs(items):
        seen = set()
        for key, _ in items:
            if key in seen:
                raise _Repeated(key)
            seen.add(key)
        return {}

    try:
        json.loads(data, object_pairs_hook=pairs)
    except _Repeated as found:
        return found.args[0]
    except (ValueError, RecursionError):
        pass
    return None


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def event_from_record(record: dict) -> Event:
    """A flat dict (a CSV row, a Parquet row) -> validated `Event`.

    Strings are coerced ("35.79" -> 35.79) and empty strings mean "absent", as in CSV.
    """
    cleaned = {k: v for k, v in record.items() if v != "" and v is not None}
    try:
        return _checked(msgspec.convert(cleaned, Event, strict=False))
    except msgspec.ValidationError:   # a type or a constraint: convert again, for the precise reason
        pass
    try:
        unchecked = msgspec.convert(cleaned, _UncheckedEvent, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(*_split_msgspec_error(str(exc))) from None
    return validate(Event(**msgspec.structs.asdict(unchecked)))


def _split_msgspec_error(message: str) -> tuple[str, str]:
    # msgspec says "Expected `str`, got `int` - at `$.user_session`"; we want field first.
    if " - at `$." in message:
        reason, _, where = message.rpartition(" - at `$.")
        return where.rstrip("`"), reason
    if "missing required field" in message:
        return "event", message
    return "event", message


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


#: The last event_time string parsed and its seconds: a stream's neighbours often share a second.
_last_time: tuple[str, float] = ("", 0.0)


def _unit_hint(seconds: float) -> str:
    """What a time out of range likely is: epoch milliseconds or microseconds (a common producer
    mistake) fall in these bands for the years 2000-2100; a small or negative one is no such thing.

    >>> _unit_hint(1.8e12), _unit_hint(1.8e15), _unit_hint(-5.0)
    (' (epoch milliseconds? event_time takes seconds)', ' (epoch microseconds? event_time takes seconds)', '')
    """
    if MIN_EVENT_TIME * 1e3 <= seconds < MAX_EVENT_TIME * 1e3:
        return " (epoch milliseconds? event_time takes seconds)"
    if MIN_EVENT_TIME * 1e6 <= seconds < MAX_EVENT_TIME * 1e6:
        return " (epoch microseconds? event_time takes seconds)"
    return ""


def parse_event_time(value: Union[float, int, str]) -> float:
    """ISO-8601 (REES46's "2019-10-01 00:00:00 UTC" too) or epoch seconds -> epoch seconds.

    >>> parse_event_time("2019-10-01T00:00:00Z"), parse_event_time(1569888000)
    (1569888000.0, 1569888000.0)
    """
    global _last_time
    if isinstance(value, str):
        last = _last_time   # one read: another thread may replace it, never half of it
        if value == last[0]:
            return last[1]   # checked when it was parsed
        text = value.strip()
        # A date has a "-" past its first character and no epoch number that float() reads has one
        # that a date parser takes: trying the likely parser first gives the same answer, sooner.
        first, second = (_iso_seconds, _epoch_seconds) if "-" in text[1:] else (_epoch_seconds, _iso_seconds)
        found = None
        if text.isprintable():   # fromisoformat takes any character between date and time, a NUL included
            found = first(text)
            if found is None:
                found = second(text)
        if found is None:
            raise InvalidEvent("event_time", "not ISO-8601 or epoch seconds", value)
        seconds = found
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or not MIN_EVENT_TIME <= seconds < MAX_EVENT_TIME:
        raise InvalidEvent("event_time", "outside 2000-01-01..2100-01-01" + _unit_hint(seconds), value)
    if isinstance(value, str):
        _last_time = (value, seconds)
    return seconds


def _epoch_seconds(text: str) -> Optional[float]:
    """float(text), or None if it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def _iso_seconds(text: str) -> Optional[float]:
    """Epoch seconds of an ISO-8601 (or REES46 "... UTC") time, naive = UTC; None if not one."""
    if text.endswith(" UTC"):
        text = text[:-4] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:  # naive times are UTC, as in REES46
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _check_id(event: Event, name: str) -> None:
    value = getattr(event, name)
    if value is None:
        return
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise InvalidEvent(name, f"must be 1..{MAX_ID_CHARS} characters", value)
    setattr(event, name, text)


_ID_FIELDS = ("product_id", "user_id", "user_session", "event_id")


def _numbers_in_range(values) -> bool:
    """True if every value is a finite float within +-MAX_FEATURE_ABS, in three passes in C (a
    NaN or inf makes the sum non-finite; 256 values of at most 1e9 cannot overflow it); False
    means "look at each" (a string value, or one out of range)."""
    try:
        return math.isfinite(sum(values)) and -MAX_FEATURE_ABS <= min(values) and max(values) <= MAX_FEATURE_ABS
    except (TypeError, ValueError):  # a string among them; or no values at all
        return not values


_NAME_FIELDS = ("category_code", "brand", "platform", "channel")


def validate(event: Event) -> Event:
    """Normalise a decoded event in place (time to epoch seconds, ids to str) and check
    what types alone cannot: known event_type, finite non-negative price, sane time."""
    if event.event_type not in EVENT_TYPES:
        raise InvalidEvent("event_type", f"must be one of {sorted(EVENT_TYPES)}", event.event_type)
    event.event_time = parse_event_time(event.event_time)
    # The common case, each field read once: every id a str of 1..MAX_ID_CHARS (event_id also None).
    product, user, session, event_id = event.product_id, event.user_id, event.user_session, event.event_id
    if (product.__class__ is not str or not 0 < len(product) <= MAX_ID_CHARS
            or user.__class__ is not str or not 0 < len(user) <= MAX_ID_CHARS
            or session.__class__ is not str or not 0 < len(session) <= MAX_ID_CHARS
            or (event_id is not None and (event_id.__class__ is not str or not 0 < len(event_id) <= MAX_ID_CHARS))):
        for name in _ID_FIELDS:
            value = getattr(event, name)
            if value.__class__ is not str or not 0 < len(value) <= MAX_ID_CHARS:
                _check_id(event, name)
    price = event.price
    if price is not None and not (math.isfinite(price) and 0.0 <= price <= MAX_PRICE):
        raise InvalidEvent("price", f"must be a finite number in 0..{MAX_PRICE:g}", price)
    for name in _NAME_FIELDS:
        value = getattr(event, name)
        if value.__class__ is str and len(value) > MAX_NAME_CHARS:
            raise InvalidEvent(name, f"must be at most {MAX_NAME_CHARS} characters, not {len(value)}", value)
    features = event.features
    if features is not None:
        if len(features) > MAX_FEATURES:
            raise InvalidEvent("features", f"more than {MAX_FEATURES} entries", len(features))
        for name in features:
            if len(name) > MAX_NAME_CHARS:
                raise InvalidEvent("features", f"a name must be at most {MAX_NAME_CHARS} characters, not {len(name)}",
                                   name)
        if not _numbers_in_range(features.values()):
            for name, value in features.items():
                if isinstance(value, float) and not (math.isfinite(value) and
                                                     -MAX_FEATURE_ABS <= value <= MAX_FEATURE_ABS):
                    raise InvalidEvent(f"features.{name}", f"must be a finite number in +-{MAX_FEATURE_ABS:g}",
                                       value)
    return event


def check_future_skew(event: Event, received_at: float, max_skew: float = MAX_FUTURE_SKEW) -> None:
    """Refuse an event dated more than `max_skew` seconds after it reached us.

    `received_at` is the Kafka record's timestamp, taken as no later than the worker's
    own clock (producers set that timestamp too). A client clock running fast would
    otherwise drag the watermark into the future: every open prediction would expire
    at once and every honest event after it would arrive "late".

    >>> e = Event(4102358400.0, "view", "p", "u", "s")   # 2099-12-31
    >>> check_future_skew(e, received_at=1.7e9)
    Traceback (most recent call last):
    ...
    shopstream.events.InvalidEvent: event_time: 2099-12-31T00:00:00Z is 76 years ahead of the record time
    2023-11-14T22:13:20Z (more than the allowed 300 s)
    >>> check_future_skew(Event(1.7e9 + 299, "view", "p", "u", "s"), received_at=1.7e9)
    """
    when = cast(float, event.event_time)  # validated: epoch seconds
    ahead = when - received_at
    if ahead > max_skew:
        raise InvalidEvent("event_time", f"{_iso(when)} is {_span(ahead)} ahead of the record time "
                           f"{_iso(received_at)} (more than the allowed {max_skew:g} s)")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(seconds: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
