"""The Kafka connection every command shares: servers, and SASL / SSL settings.

`KafkaConnection` is one frozen object (its password a `Secret`), and
`kafka_options(connection)` turns it into kafka-python keyword arguments, so each command
configures the client the same way. The password is passed to the client and nowhere
else: it is not in a repr, a log line or `--help`.

>>> connection = KafkaConnection("a:9092,b:9092", "SASL_SSL", "SCRAM-SHA-256", "u", "p", "ca.pem")
>>> connection.sasl_password
<secret>
>>> options = kafka_options(connection)
>>> options["sasl_mechanism"], options["sasl_plain_password"], options["bootstrap_servers"]
('SCRAM-SHA-256', 'p', ['a:9092', 'b:9092'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from shopstream.options import option_meta as _help

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# kafka-python 3.0.12 backs off up to 30 s (the Java client: 1 s), metadata refreshes
# included. After a broker restart its fetches carry a stale leader epoch and are
# fenced until the next metadata refresh: a worker stalled 17-28 s after every outage.
RECONNECT_BACKOFF_MAX_MS = 1000


class Secret:
    """A value that never shows in a repr, a log line or ``--help``; `reveal()` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to authenticate (SASL / SSL)."""

    bootstrap_servers: str = field(default="127.0.0.1:9092", metadata=_help("Kafka bootstrap servers"))
    security_protocol: str = field(default="PLAINTEXT", metadata=_help(
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", choices=SECURITY_PROTOCOLS))
    sasl_mechanism: str = field(default="PLAIN", metadata=_help(
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", choices=SASL_MECHANISMS))
    sasl_username: Optional[str] = field(default=None, metadata=_help("SASL user", type=str))
    sasl_password: Optional[Secret] = field(default=None, metadata=_help(
        "SASL password (prefer the environment variable)", type=str, secret=True))
    ssl_cafile: Optional[str] = field(default=None, metadata=_help("CA bundle to verify the brokers", type=str))
    ssl_certfile: Optional[str] = field(default=None, metadata=_help("client certificate (mutual TLS)", type=str))
    ssl_keyfile: Optional[str] = field(default=None, metadata=_help("client private key (mutual TLS)", type=str))

    def __post_init__(self) -> None:
        if isinstance(self.sasl_password, str):
            object.__setattr__(self, "sasl_password", Secret(self.sasl_password))


def kafka_options(config: KafkaConnection) -> dict:
    """kafka-python keyword arguments for a consumer, producer or admin client."""
    protocol = config.security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(f"security protocol {protocol!r}: choose from {SECURITY_PROTOCOLS}")
    options = {"bootstrap_servers": config.bootstrap_servers.split(","), "security_protocol": protocol,
               "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}
    if protocol.startswith("SASL"):
        mechanism = config.sasl_mechanism
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(f"SASL mechanism {mechanism!r}: choose from {SASL_MECHANISMS}")
        username, password = config.sasl_username, config.sasl_password
        if not username or not password:
            raise ValueError(f"{protocol} needs --sasl-username and --sasl-password (or SHOPSTREAM_SASL_PASSWORD)")
        options.update(sasl_mechanism=mechanism, sasl_plain_username=username, sasl_plain_password=password.reveal())
    if protocol.endswith("SSL"):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(config, name)
            if value:
                options[name] = value
    return options
