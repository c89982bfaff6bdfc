"""The scoring API's request codec: what is accepted, and the one line each refusal says."""

import pytest

from stream.score_codec import RequestError, date_event, decode_request, error_body

NOW = 1.7e9
GOOD = {"user_id": 541312140, "user_session": "s-1", "product_id": 44600062, "event_type": "view", "price": 35.79,
        "category_code": "electronics.phone", "brand": "acme", "platform": "web", "channel": "search"}


def body(**fields) -> bytes:
    import json

    return json.dumps({**GOOD, **fields}).encode()


def refused(data: bytes, **options) -> RequestError:
    with pytest.raises(RequestError) as caught:
        decode_request(data, NOW, **options)
    return caught.value


def test_a_good_request_becomes_the_event_the_stream_would_carry():
    event, timed = decode_request(body(), NOW)
    assert (event.user_id, event.user_session, event.product_id) == ("541312140", "s-1", "44600062")
    assert event.event_type == "view" and event.price == 35.79 and event.platform == "web"
    assert event.event_id.startswith("api-") and not timed and event.event_time == NOW
    again, _ = decode_request(body(), NOW)
    assert again.event_id != event.event_id  # each request its own id unless the client names one
    named, timed = decode_request(body(event_id="view-77", event_time="2023-01-02T03:04:05Z"), NOW)
    assert named.event_id == "view-77" and timed and named.event_time == 1672628645.0


def test_the_partition_dates_a_request_without_event_time():
    event, timed = decode_request(body(), NOW)
    assert date_event(event, timed, 1.6e9).event_time == 1.6e9  # the stream's clock, not the wall clock
    event, timed = decode_request(body(), NOW)
    assert date_event(event, timed, None).event_time == NOW     # a partition without events: now
    event, timed = decode_request(body(event_time=1.65e9), NOW)
    assert date_event(event, timed, 1.6e9).event_time == 1.65e9  # the client's own time wins


@pytest.mark.parametrize("data, status, reason, says", [
    (b"", 400, "malformed_json", "empty body"),
    (b"{\"user_id\": 1", 400, "malformed_json", "not a JSON object"),
    (b"[1, 2]", 400, "malformed_json", "must be a JSON object"),
    (b"\xff\xfe", 400, "malformed_json", "not a JSON object"),
    (body(pirce=1), 400, "unknown_field", "pirce: not a request field"),
    (body(label=True), 400, "unknown_field", "label: not a request field"),   # a score request never carries its label
    (b'{"user_id": 1, "product_id": 2, "event_type": "view"}', 400, "missing_field", "user_session: required"),
    (body(event_type="purchase"), 400, "invalid_value", "event_type"),
    (body(price=-3), 400, "invalid_value", "price: must be a finite number in 0..1e+09"),
    (body(price=1e12), 400, "invalid_value", "price: must be a finite number in 0..1e+09"),
    (body(price="cheap"), 400, "invalid_value", "price: Expected `float | null`, got `str`"),
    (body(user_session="x" * 300), 400, "invalid_value", "user_session: must be 1..256 characters"),
    (body(user_session=""), 400, "invalid_value", "user_session: must be 1..256 characters"),
    (body(event_time="yesterday"), 400, "invalid_value", "event_time: not ISO-8601 or epoch seconds"),
    (body(event_time=4102358400.0 - 86400), 400, "invalid_value", "ahead of the record time"),
    (body(features={"f": 1e300}), 400, "invalid_value", "features.f: must be a finite number"),
    (body(brand=["a"]), 400, "invalid_value", "brand: Expected `str | null`, got `array`"),
    # a key given twice: the decoder kept the last, so a view could be recorded as a cart
    (body()[:-1] + b', "event_type": "cart"}', 400, "malformed_json", "key 'event_type' given twice"),
    (body(features={"f": 1.0})[:-2] + b', "f": 2.0}}', 400, "malformed_json", "key 'f' given twice"),
])
def test_bad_requests_are_refused_with_one_line_saying_why(data, status, reason, says):
    error = refused(data)
    assert (error.status, error.reason) == (status, reason)
    assert says in error.message and "\n" not in error.message
    assert error_body(error).count(b"\n") == 1  # one JSON line


def test_an_oversized_body_is_refused_before_it_is_parsed():
    error = refused(body(brand="b" * 20_000))
    assert (error.status, error.reason) == (413, "body_too_large")
    assert "exceeds the 16384-byte limit" in error.message
    assert refused(body(), max_bytes=10).reason == "body_too_large"


def test_the_future_skew_allowed_is_the_workers():
    event, timed = decode_request(body(event_time=NOW + 200), NOW)  # within the default 300 s
    assert timed and event.event_time == NOW + 200
    error = refused(body(event_time=NOW + 200), max_future_skew=60.0)  # a worker run with --max-future-skew 60
    assert (error.status, error.reason) == (400, "invalid_value") and "more than the allowed 60 s" in error.message
