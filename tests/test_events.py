"""Event validation: every bad input is rejected with the field and the reason."""

import json
import math
from math import nextafter

import msgspec
import pytest

from shopstream.events import (MAX_EVENT_BYTES, MAX_EVENT_TIME, MAX_FEATURE_ABS, MAX_FEATURES, MAX_ID_CHARS,
                               MAX_NAME_CHARS, MAX_PRICE, MIN_EVENT_TIME, InvalidEvent, _explain, decode_event,
                               event_from_record)
from shopstream.readers import parse_column_map, read_events

GOOD = {"event_time": "2019-10-01 00:00:05 UTC", "event_type": "view", "product_id": 44600062,
        "user_id": 541312140, "user_session": "72d76fde", "price": 35.79, "brand": "shiseido",
        "category_code": "beauty.skin", "event_id": "e1"}


def encoded(**changes):
    event = {**GOOD, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def test_good_event_is_normalised():
    event = decode_event(encoded())
    assert event.event_time == 1569888005.0
    assert (event.product_id, event.user_id) == ("44600062", "541312140")
    assert decode_event(encoded(event_time=1569888005)).event_time == 1569888005.0
    assert decode_event(encoded(event_time="2019-10-01T00:00:05+00:00")).event_time == 1569888005.0
    labelled = decode_event(encoded(features={"a": 1.5, "b": "x"}, label=True))
    assert labelled.features == {"a": 1.5, "b": "x"} and labelled.label is True


@pytest.mark.parametrize("payload, field, reason", [
    (encoded(user_session=...), "event", "missing required field `user_session`"),
    (encoded(event_time=...), "event", "missing required field `event_time`"),
    (encoded(user_session=123.5), "user_session", "Expected `int | str`, got `float`"),
    (encoded(event_type="click"), "event_type", "must be one of"),
    (encoded(event_type=None), "event_type", "Expected `str`, got `null`"),
    (encoded(price=-1.0), "price", "finite number in 0..1e+09"),
    (encoded(price="12"), "price", "Expected `float | null`, got `str`"),
    (encoded(price=1e999).replace(b"Infinity", b"1e999"), "price", "Number out of range"),
    (encoded().replace(b"35.79", b"NaN"), "payload", "malformed"),
    (encoded(event_time="yesterday"), "event_time", "not ISO-8601"),
    (encoded(event_time=1569888005000), "event_time", "outside 2000-01-01..2100-01-01 (epoch milliseconds?"),
    (encoded(event_time=1569888005000000), "event_time", "(epoch microseconds? event_time takes seconds)"),
    (encoded(event_time=-5), "event_time", "outside 2000-01-01..2100-01-01 (value"),
    (encoded(event_time="1850-01-01T00:00:00"), "event_time", "outside"),
    (encoded(event_time=True), "event_time", "got `bool`"),
    (encoded(label="yes"), "label", "Expected `bool | null`"),
    (encoded(features={"a": [1]}), "features[...]", "Expected `float | str`, got `array`"),
    (encoded(features={"a": 1e999}).replace(b"Infinity", b"1e999"), "features[...]", "Number out of range"),
    (encoded(user_id=""), "user_id", "1..256 characters"),
    (b"[1, 2]", "event", "Expected `object`, got `array`"),
    (b"\"just a string\"", "event", "Expected `object`, got `str`"),
    (b'{"event_time": 1', "payload", "truncated"),
    (b"\xff\xfe{}", "payload", "invalid UTF-8"),
    (b"", "payload", "empty message"),
    (b'{"a":' * 5000, "payload", "nested too deeply"),
    (b"{" + b" " * MAX_EVENT_BYTES + b"}", "payload", "exceeds"),
])
def test_bad_events_say_what_where_why(payload, field, reason):
    with pytest.raises(InvalidEvent) as caught:
        decode_event(payload)
    assert caught.value.field == field
    assert reason in str(caught.value)


def test_invalid_utf8_inside_a_string():
    with pytest.raises(InvalidEvent, match="UTF-8"):
        decode_event(encoded(brand="BRAND").replace(b"BRAND", b"\xc3\x28"))


def test_csv_rows_coerce_strings_and_treat_empty_as_absent():
    event = event_from_record({**{k: str(v) for k, v in GOOD.items()}, "brand": "", "price": "35.79"})
    assert event.price == 35.79 and event.brand is None
    with pytest.raises(InvalidEvent, match="price"):
        event_from_record({**GOOD, "price": "abc"})
    with pytest.raises(InvalidEvent, match="price"):
        event_from_record({**GOOD, "price": "nan"})


def test_rees46_csv_loads_unchanged(tmp_path):
    path = tmp_path / "2019-Oct.csv"
    path.write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-8bb3\n"
        "2019-10-01 00:00:01 UTC,cart,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,"
        "554748717,9333dfbd\n"
        "2019-10-01 00:00:02 UTC,purchase,17200506,2053013559792632471,furniture.living_room.sofa,,-5,"
        "518085591,3bfb58cd\n"
        "not a time,view,1,2,,,1.0,3,4\n"
    )
    parsed = list(read_events(path))
    assert [type(p).__name__ for _, p in parsed] == ["Event", "Event", "InvalidEvent", "InvalidEvent"]
    assert parsed[2][0] == "2019-Oct.csv:4" and parsed[2][1].field == "price"
    assert parsed[0][1].category_code is None and parsed[1][1].price == 33.2


def test_column_mapping_renames_another_export(tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"ts": 1569888005, "kind": "view", "sku": "p", "uid": "u", "sid": "s"}) + "\n")
    mapping = parse_column_map("event_time=ts,event_type=kind,product_id=sku,user_id=uid,user_session=sid")
    [(where, event)] = list(read_events(path, mapping))
    assert where == "other.jsonl:1" and event.product_id == "p" and event.event_time == 1569888005.0
    with pytest.raises(ValueError, match="OURS=THEIRS"):
        parse_column_map("event_time")


def test_unknown_fields_are_ignored_not_fatal():
    assert decode_event(encoded(unexpected={"nested": [1, 2]})).event_type == "view"
    assert math.isfinite(decode_event(encoded()).price)


def test_parquet_reader(tmp_path):
    import pyarrow as pa  # optional for users, part of the test extras
    import pyarrow.parquet as pq

    table = pa.table({"event_time": ["2019-10-01 00:00:00 UTC", "bad"], "event_type": ["view", "view"],
                      "product_id": [1, 2], "user_id": [3, 4], "user_session": ["s", "t"], "price": [1.5, 2.0]})
    pq.write_table(table, tmp_path / "h.parquet")
    parsed = list(read_events(tmp_path / "h.parquet"))
    assert parsed[0][1].product_id == "1" and parsed[0][1].price == 1.5
    assert parsed[1][0] == "h.parquet:row 2" and parsed[1][1].field == "event_time"


def _reference_event_time(value):
    """parse_event_time as it was written first (float, then ISO): the fast path must agree."""
    from datetime import datetime, timezone

    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if text.endswith(" UTC"):
                text = text[:-4] + "+00:00"
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                return "not ISO-8601"
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            seconds = moment.timestamp()
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or not MIN_EVENT_TIME <= seconds < MAX_EVENT_TIME:
        return "outside"
    return seconds


@pytest.mark.parametrize("value", [
    "2019-10-01 00:00:05 UTC", "2019-10-01T00:00:05Z", "2019-10-01T00:00:05+02:00", " 2019-10-01T00:00:05 ",
    "2019-10-01", "20191001", "20191001T000005Z", "1569888005", "1569888005.25", " 1569888005 ", "1.569888005e9",
    "1e-5", "-1569888005", "1_569_888_005", "inf", "nan", "-inf", "2019-13-01T00:00:00Z", "2019-10-01 00:00:05 CET",
    "yesterday", "", "-", "1-2", "1850-01-01T00:00:00", "2099-12-31T23:59:59Z", "2100-01-01T00:00:00Z",
    1569888005, 1569888005.5, 0, float("nan"),
])
def test_event_times_parse_as_the_plain_float_then_iso_order_would(value):
    from shopstream.events import parse_event_time

    want = _reference_event_time(value)
    for _ in range(2):  # the second time through the one-entry cache
        if isinstance(want, str):
            with pytest.raises(InvalidEvent, match=want):
                parse_event_time(value)
        else:
            assert parse_event_time(value) == want


# -- the decoder's constraints (msgspec, in C) and the rules (`validate`, in Python) agree ---------------

def _outcome(read, data):
    """What reading `data` gives: ("event", the event's fields) or ("refused", the message)."""
    try:
        event = read(data)
    except InvalidEvent as exc:
        return "refused", str(exc)
    return "event", msgspec.structs.astuple(event)


def _body(**changes):
    good = {"event_time": 1.77e9, "event_type": "view", "product_id": "p1", "user_id": "u1", "user_session": "s1",
            "event_id": "e1", "price": 9.5, "features": {"x": 0.5}}
    good.update(changes)
    return json.dumps(good).encode()


EDGES = [
    _body(), _body(price=0.0), _body(price=-0.0), _body(price=MAX_PRICE), _body(price=nextafter(MAX_PRICE, math.inf)),
    _body(price=-1e-300), _body(price=1e999), _body(price=-1e999),
    _body(event_time=MIN_EVENT_TIME), _body(event_time=nextafter(MIN_EVENT_TIME, 0)), _body(event_time=MAX_EVENT_TIME),
    _body(event_time=nextafter(MAX_EVENT_TIME, 0)), _body(event_time=1e999), _body(event_time=1700000000),
    _body(event_time="2026-01-01T00:00:00Z"), _body(event_time="1700000000.5"),
    _body(event_time="1999-12-31T23:59:59Z"), _body(event_time="2026-01-01\x0000:00:00"),
    _body(event_time="2026-01-01\n00:00:00"),
    _body(event_time=True), _body(event_time=None),
    _body(features={"x": MAX_FEATURE_ABS, "y": -MAX_FEATURE_ABS}),
    _body(features={"x": nextafter(MAX_FEATURE_ABS, math.inf)}),
    _body(features={"x": nextafter(-MAX_FEATURE_ABS, -math.inf)}),
    _body(features={"x": 1e999}), _body(features={"x": "text"}),
    _body(features={"x": 3}), _body(features={"x": None}), _body(features={}), _body(features=None),
    _body(features={f"f{i}": 1.0 for i in range(MAX_FEATURES)}),
    _body(features={f"f{i}": 1.0 for i in range(MAX_FEATURES + 1)}),
    _body(user_id="é" * MAX_ID_CHARS), _body(user_id="é" * (MAX_ID_CHARS + 1)), _body(user_id=""),
    _body(user_id=12345), _body(user_id=int("9" * MAX_ID_CHARS)), _body(user_id=int("9" * (MAX_ID_CHARS + 1))),
    _body(product_id=-0), _body(user_session=""), _body(user_session="s" * (MAX_ID_CHARS + 1)), _body(event_id=""),
    _body(event_id=None), _body(event_id=7), _body(event_type="click"), _body(event_type="click", price=-1.0),
    _body(price=-1.0, user_id=""), _body(price="9.5"), _body(label="yes"), _body(label=True),
    b'{"event_time": 1', b'{"event_time": 1.77e9, "price": 1e12}',
    _body(price=-1.0).replace(b'"price"', b'"price": 1, "price"'),
    _body(features={"x": 1e12}).replace(b'"x"', b'"x": 1, "x"'),
    _body(brand="b" * MAX_NAME_CHARS), _body(brand="é" * (MAX_NAME_CHARS + 1)),
    _body(category_code="c" * (MAX_NAME_CHARS + 1)), _body(platform="p" * (MAX_NAME_CHARS + 1)),
    _body(channel="c" * (MAX_NAME_CHARS + 1)), _body(features={"n" * MAX_NAME_CHARS: 1.0}),
    _body(features={"n" * (MAX_NAME_CHARS + 1): 1.0}),
]


@pytest.mark.parametrize("data", EDGES, ids=range(len(EDGES)))
def test_the_constrained_decoder_decides_every_edge_as_the_rules_do(data):
    """The decoder checks ranges and lengths in C as it reads; an event it refuses is read again
    by the rules, which give the message. Both paths must give the same event, or the same message."""
    assert _outcome(decode_event, data) == _outcome(_explain, data)  # _explain: the rules alone, as before


def test_csv_rows_over_a_constraint_get_the_rules_message():
    row = {"event_time": "2026-01-01 00:00:00 UTC", "event_type": "view", "product_id": "p", "user_id": "u",
           "user_session": "s"}
    with pytest.raises(InvalidEvent, match=r"^price: must be a finite number in 0\.\.1e\+09"):
        event_from_record({**row, "price": "1e12"})
    with pytest.raises(InvalidEvent, match=r"^user_id: must be 1\.\.256 characters"):
        event_from_record({**row, "user_id": "u" * 257})
    assert event_from_record({**row, "price": "1e9"}).price == 1e9


def test_the_unchecked_twin_has_the_events_fields_types_and_defaults_less_the_constraints():
    """`_UncheckedEvent` is `Event` without its msgspec constraints: a field added to one and not the
    other would make the precise messages (or the events read again) differ from the fast path's."""
    import typing

    from shopstream.events import Event, _UncheckedEvent

    def unconstrained(hint):
        if typing.get_origin(hint) is typing.Annotated:
            return unconstrained(typing.get_args(hint)[0])
        args = typing.get_args(hint)
        if not args:
            return hint
        origin = typing.get_origin(hint)
        return typing.Union[tuple(map(unconstrained, args))] if origin is typing.Union else \
            origin[tuple(map(unconstrained, args))]

    checked = typing.get_type_hints(Event, include_extras=True)
    assert Event.__struct_fields__ == _UncheckedEvent.__struct_fields__
    assert Event.__struct_defaults__ == _UncheckedEvent.__struct_defaults__
    assert {name: unconstrained(hint) for name, hint in checked.items()} == typing.get_type_hints(_UncheckedEvent)


def test_feature_names_are_shared_between_events_as_river_needs_them():
    """msgspec hands out one copy of a short key for every event (its key cache) unless the key is
    constrained; River's dicts find a shared name by identity, and a new copy by its characters
    (about 20% of River's calls on 12 raw features, BENCHMARKS.md). The length is checked all the same."""
    first, second = (decode_event(_body(features={"clicks": 1.0, "dwell": 2.0})) for _ in range(2))
    assert [a is b for a, b in zip(first.features, second.features)] == [True, True]
    with pytest.raises(InvalidEvent, match="a name must be at most 256 characters, not 257"):
        decode_event(_body(features={"clicks": 1.0, "n" * (MAX_NAME_CHARS + 1): 1.0}))
