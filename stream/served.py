"""A served prediction, carried with its event: the header ``shopstream.served``.

With ``--serve-recorded written`` the scoring API answers a recorded score as soon as its
event is written to the events topic, not once the poll loop has processed it: the score is
computed at once on the live state (`Engine.serve`), and the record carries it in this header
(the features it was computed on, every model's output, which one was the champion). The
worker that processes the record, the same or the partition's next owner after a crash or a
rebalance, records exactly that prediction (`Engine.process(..., served=...)`): the number
served is the one published and scored, the models learn from the features it was served
on, and a replay reads the same header, so it records the same number again. Unless, by the
time the loop reaches the record, the events ahead of it have moved the watermark past it (a
late event opens no prediction, served or not), or a copy of its event id came first: which
is why the API answers such a score "written", not "recorded" (stream/serving.py).

The header is JSON, read with limits like an event's: at most `MAX_SERVED_FEATURES` features
of finite numbers (or strings, as raw features may be) and `MAX_SERVED_MODELS` outputs, each a
P(True) in [0, 1] and a label (true, false, or null: the model could not score it). The engine
then refuses features its feature set could not have given (`unfit` of each feature set). With a
signing key (SHOPSTREAM_SIGNING_KEY or --signing-key-file), the API signs it together with the
event's bytes (``shopstream.served.hmac``), and a worker refuses one that is not so signed: a
served prediction sets the features a model learns from, which an event alone cannot.

>>> value = encode_served(({"a": 0.5, "b": -0.0}, ((0.25, False), (0.75, True)), 1))
>>> value
b'{"v":1,"x":{"a":0.5,"b":-0.0},"outputs":[[0.25,false],[0.75,true]],"champion":1}'
>>> decode_served(value)
({'a': 0.5, 'b': -0.0}, ((0.25, False), (0.75, True)), 1)
>>> decode_served(b'{"v":1,"x":{},"outputs":[[1.5,true]],"champion":0}')
Traceback (most recent call last):
...
shopstream.events.InvalidEvent: served: Expected `float` <= 1.0 - at `$.outputs[0][0]`
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal, Optional, Union

import msgspec

from shopstream.events import MAX_FEATURE_ABS, MAX_NAME_CHARS, InvalidEvent
from shopstream.signing import KEY_IS_SET, sign

SERVED_HEADER = "shopstream.served"
SERVED_HMAC_HEADER = "shopstream.served.hmac"
MAX_SERVED_FEATURES = 1024
MAX_SERVED_MODELS = 64
#: A served feature is a number the feature code made (a count, a log price, a one-hot 0 or 1),
#: or a raw feature the event carried: within the events' own bound.
_Number = Annotated[float, msgspec.Meta(ge=-MAX_FEATURE_ABS, le=MAX_FEATURE_ABS)]
_Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class _Served(msgspec.Struct, forbid_unknown_fields=True):
    v: Literal[1]
    # names' length checked in `decode_served`: a constrained key would turn msgspec's key cache off
    # (shopstream/events.py, `_Features`)
    x: Annotated[dict[str, Union[_Number, Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]]],
                 msgspec.Meta(max_length=MAX_SERVED_FEATURES)]
    outputs: Annotated[list[tuple[_Probability, Optional[bool]]],
                       msgspec.Meta(min_length=1, max_length=MAX_SERVED_MODELS)]
    champion: Annotated[int, msgspec.Meta(ge=0, lt=MAX_SERVED_MODELS)]


_decoder = msgspec.json.Decoder(_Served)
_encoder = msgspec.json.Encoder()


def encode_served(served: tuple) -> bytes:
    """(features, outputs, champion) from `Engine.serve` -> the header's value. Floats are written
    in their shortest exact form: they read back bit for bit."""
    x, outputs, champion = served
    return _encoder.encode(_Served(1, x, [tuple(output) for output in outputs], champion))


def decode_served(value: bytes) -> tuple[dict, tuple, int]:
    """The header's value -> (features, outputs, champion), or `InvalidEvent` saying what is wrong
    (the engine checks what depends on it: a champion among the outputs, no more outputs than models)."""
    try:
        served = _decoder.decode(value)
    except msgspec.ValidationError as exc:
        raise InvalidEvent("served", str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidEvent("served", f"not JSON: {exc}") from None
    x = served.x
    if x and max(map(len, x)) > MAX_NAME_CHARS:
        name = max(x, key=len)
        raise InvalidEvent("served", f"feature name {name[:40]!r}... is {len(name)} characters, "
                                     f"more than {MAX_NAME_CHARS}")
    return x, tuple(served.outputs), served.champion


def served_header(headers) -> Optional[bytes]:
    """The value of the record's ``shopstream.served`` header, or None. More than one is refused:
    which would count?"""
    return _one(headers, SERVED_HEADER)


def _one(headers, name: str) -> Optional[bytes]:
    found = None
    for key, value in headers:
        if key == name:
            if found is not None:
                raise InvalidEvent(name, "the header appears more than once")
            if not value:
                raise InvalidEvent(name, "the header is empty")
            found = value
    return found


def _signed(event_value: bytes, served: bytes, key: bytes) -> bytes:
    # the event's bytes too: a served prediction is not moved onto another event
    return sign(len(event_value).to_bytes(8, "big") + event_value + served, key).encode()


def served_headers(event_value: bytes, served: bytes, key: Optional[bytes]) -> list:
    """The headers a record carrying `served` gets: the prediction, and its HMAC with the event's
    bytes when there is a key."""
    headers = [(SERVED_HEADER, served)]
    if key is not None:
        headers.append((SERVED_HMAC_HEADER, _signed(event_value, served, key)))
    return headers


def check_signed(event_value: bytes, served: bytes, headers, key: bytes) -> None:
    """`InvalidEvent` unless the record's ``shopstream.served.hmac`` proves `served` and the event's
    bytes were signed with `key`.

    >>> headers = served_headers(b"event", b"served", b"k")
    >>> check_signed(b"event", b"served", headers, b"k")
    >>> check_signed(b"other", b"served", headers, b"k")
    Traceback (most recent call last):
    ...
    shopstream.events.InvalidEvent: served: HMAC does not match: forged, or moved onto another event
    """
    tag = _one(headers, SERVED_HMAC_HEADER)
    if tag is None:
        raise InvalidEvent("served", f"unsigned, but {KEY_IS_SET}")
    if not isinstance(tag, bytes) or not hmac.compare_digest(tag, _signed(event_value, served, key)):
        raise InvalidEvent("served", "HMAC does not match: forged, or moved onto another event")
