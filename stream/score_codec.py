"""The scoring API's request and answer bodies: bytes in, a validated `Event` out, or a
`RequestError` with the HTTP status, a reason (a metric label) and one line saying why.

A request is a JSON object naming the user, session and product and the event's own
fields; anything else is refused, so a typo (``"pirce"``) is an error, not a silently
ignored field. Values are checked with the events' own rules (`shopstream.events.validate`):
what the API accepts, a worker accepts from the events topic.

>>> event, timed = decode_request(b'{"user_id": 7, "user_session": "s1", "product_id": "p1", '
...                               b'"event_type": "view", "price": 35.79}', now=1.7e9)
>>> event.user_id, event.event_type, event.price, timed, event.event_id.startswith("api-")
('7', 'view', 35.79, False, True)
>>> decode_request(b'{"user_id": 7, "user_session": "s1", "product_id": "p1", "event_type": "view", "pirce": 1}',
...                now=1.7e9)
Traceback (most recent call last):
...
stream.score_codec.RequestError: 400 unknown_field: pirce: not a request field (fields: brand, \
category_code, channel, event_id, event_time, event_type, features, platform, price, product_id, user_id, \
user_session)
"""

from __future__ import annotations

import uuid
from typing import Literal, Optional, Union

import msgspec

from shopstream.events import (MAX_FUTURE_SKEW, Event, InvalidEvent, check_future_skew, parse_event_time,
                               repeated_key, validate)

#: Why a request failed: the label values of shopstream_score_errors_total.
REASONS = ("malformed_json", "unknown_field", "missing_field", "invalid_value", "body_too_large", "slow_client",
           "headers_too_large", "bad_request_line", "length_required", "unknown_session", "late_event",
           "unauthorized", "not_found", "method_not_allowed", "too_many_connections", "busy", "not_owner",
           "owner_unreachable", "kafka_unavailable", "timeout", "partition_moved", "stopping", "behind",
           "expectation_failed")


class RequestError(Exception):
    """A request the API refuses: `status` (4xx, or 5xx when the service cannot answer now),
    `reason` (a fixed label), and the one line the client reads."""

    def __init__(self, status: int, reason: str, message: str, **extra):
        assert reason in REASONS, reason
        self.status = status
        self.reason = reason
        self.message = message
        self.extra = extra  # e.g. where to ask instead: partition, owner
        self.mode: Optional[str] = None  # the HTTP front's: the path's mode, once read (counted by it)
        super().__init__(f"{status} {reason}: {message}")


class ScoreRequest(msgspec.Struct, forbid_unknown_fields=True):
    user_id: Union[int, str]
    user_session: Union[int, str]
    product_id: Union[int, str]
    event_type: Literal["view", "cart"]
    event_id: Optional[Union[int, str]] = None
    event_time: Optional[Union[float, str]] = None   # default: the partition's current event time
    price: Optional[float] = None
    category_code: Optional[str] = None
    brand: Optional[str] = None
    platform: Optional[str] = None
    channel: Optional[str] = None
    features: Optional[dict[str, Union[float, str]]] = None


FIELDS = sorted(f for f in ScoreRequest.__struct_fields__)
_decoder = msgspec.json.Decoder(ScoreRequest)
_encoder = msgspec.json.Encoder()


def decode_request(body: bytes, now: float, max_bytes: int = 16 * 1024,
                   max_future_skew: float = MAX_FUTURE_SKEW) -> tuple[Event, bool]:
    """A request body -> (a validated view or cart `Event` with an ``event_id``, whether the
    client gave its ``event_time``). The event id is the client's, else a new ``api-<uuid>``.
    Without ``event_time`` the event is dated `now` for now: the owner of the partition
    dates it (`date_event`). An ``event_time`` more than `max_future_skew` seconds after `now`
    is refused: the worker's own limit (``--max-future-skew``), or it would dead-letter the event."""
    if len(body) > max_bytes:
        raise RequestError(413, "body_too_large", f"body of {len(body)} bytes exceeds the {max_bytes}-byte limit")
    if not body.strip():
        raise RequestError(400, "malformed_json", "empty body: send a JSON object")
    try:
        request = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(400, "malformed_json", f"not a JSON object: {exc}") from None
    # a key given twice: the decoder kept the last, so a view could be recorded as a cart
    repeated = repeated_key(body)
    if repeated is not None:
        raise RequestError(400, "malformed_json", f"key {repeated[:80]!r} given twice in one object")
    event = Event(now, request.event_type, request.product_id, request.user_id, request.user_session,
                  event_id=request.event_id if request.event_id is not None else f"api-{uuid.uuid4().hex}",
                  category_code=request.category_code, brand=request.brand, price=request.price,
                  platform=request.platform, channel=request.channel, features=request.features)
    try:
        validate(event)  # ids to str, lengths, price and feature ranges: the events topic's own rules
        if request.event_time is not None:
            event.event_time = parse_event_time(request.event_time)
            check_future_skew(event, now, max_future_skew)
    except InvalidEvent as exc:
        raise RequestError(400, "invalid_value", str(exc)) from None
    return event, request.event_time is not None


def date_event(event: Event, timed: bool, partition_time: Optional[float]) -> Event:
    """A request without ``event_time`` happens at the partition's current event time (its
    latest event's), so scoring "now" never drags a partition's clock ahead of its stream
    (which would expire every open prediction at once); at the time it arrived for a
    partition without events."""
    if not timed and partition_time:
        event.event_time = partition_time
    return event


def _validation_error(message: str) -> RequestError:
    # msgspec: "Object contains unknown field `pirce`", "Object missing required field `user_id`",
    # "Expected `str`, got `array` - at `$.brand`"
    if message.startswith("Object contains unknown field"):
        name = message.split("`")[1]
        return RequestError(400, "unknown_field", f"{name}: not a request field (fields: {', '.join(FIELDS)})")
    if message.startswith("Object missing required field"):
        name = message.split("`")[1]
        return RequestError(400, "missing_field", f"{name}: required")
    if " - at `$." in message:
        reason, _, where = message.rpartition(" - at `$.")
        return RequestError(400, "invalid_value", f"{where.rstrip('`')}: {reason}")
    if message.startswith("Expected `object`"):
        return RequestError(400, "malformed_json", f"the body must be a JSON object ({message})")
    return RequestError(400, "invalid_value", message)


def encode(answer: dict) -> bytes:
    return _encoder.encode(answer) + b"\n"


def error_body(error: RequestError) -> bytes:
    """One line saying why, as JSON (with `extra`, e.g. where to ask instead)."""
    return encode({"error": error.message, "reason": error.reason, **error.extra})
