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

import os
import re
import socket
import stat
from dataclasses import dataclass, field
from typing import Optional

from shopstream.options import ConfigError, check, option_meta as _help

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# kafka-python 3.0.12 backs off up to 30 s (the Java client: 1 s), metadata refreshes
# included. After a broker restart its fetches carry a stale leader epoch and are
# fenced until the next metadata refresh: a worker stalled 17-28 s after every outage.
RECONNECT_BACKOFF_MAX_MS = 1000
#: The files a TLS connection reads (`check_files`).
SSL_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
#: One bootstrap server: HOST:PORT, an IPv6 address in brackets ([::1]:9092).
_SERVER = re.compile(r"(?:\[(?P<ipv6>[^\[\]]*)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]+)")
SERVERS_RULE = "HOST:PORT[,HOST:PORT...], an IPv6 address in brackets ([::1]:9092)"


class Secret:
    """A value that never shows in a repr, a log line or ``--help``; `reveal()` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    def __bool__(self) -> bool:
        """False when empty, as a str (without it `not password` never held: an empty password passed)."""
        return bool(self._value)

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
        protocol = self.security_protocol
        check(self, (("security_protocol", protocol in SECURITY_PROTOCOLS, f"must be one of {SECURITY_PROTOCOLS}"),
                     ("sasl_mechanism", self.sasl_mechanism in SASL_MECHANISMS, f"must be one of {SASL_MECHANISMS}")))
        problem = servers_problem(self.bootstrap_servers)
        if problem:
            raise ConfigError("bootstrap_servers", self.bootstrap_servers, problem)
        # A credential the protocol does not use would be dropped without a word: the connection is
        # then not the one asked for (no SASL login, no TLS verification against that CA).
        for name in ("sasl_username", "sasl_password", *SSL_FILES):
            sasl = name.startswith("sasl")
            if getattr(self, name) and not (protocol.startswith("SASL") if sasl else protocol.endswith("SSL")):
                wanted = "SASL_PLAINTEXT or SASL_SSL" if sasl else "SSL or SASL_SSL"
                shown = None if name == "sasl_password" else getattr(self, name)   # a password is never shown
                raise ConfigError(name, shown, f"is set but security_protocol is {protocol}: it would be ignored "
                                  f"(a setting of {wanted}; unset it, or choose that protocol)")
        if protocol.startswith("SASL"):
            check(self, (("sasl_username", bool((self.sasl_username or "").strip()),
                          f"is required by {protocol} (a user name)"),))
            if not self.sasl_password:   # never echoed, not even empty
                raise ConfigError("sasl_password", None, f"is required by {protocol} and must not be empty "
                                  "(--sasl-password or SHOPSTREAM_SASL_PASSWORD)")

    @property
    def servers(self) -> list[str]:
        """The bootstrap servers, one a string (none for an empty setting)."""
        return [item.strip() for item in self.bootstrap_servers.split(",")] if self.bootstrap_servers else []

    def check_files(self) -> None:
        """The TLS files exist and can be read: refused at start, naming the setting and the file,
        rather than by the client once it connects. (Checked by the commands that connect, not here:
        a connection can be described on a machine that does not hold its files.)"""
        for name in SSL_FILES:
            path = getattr(self, name)
            if not path:
                continue
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    raise ConfigError(name, path, "is not a regular file (a directory, pipe, device or socket)")
                with open(path, "rb"):   # a regular file: opening it cannot block
                    pass
            except OSError as exc:
                raise ConfigError(name, path, f"cannot be read: {exc.strerror or exc}") from None


def servers_problem(servers: str) -> Optional[str]:
    """Why `servers` (``--bootstrap-servers``) is no list of HOST:PORT, or None when it is; an
    empty setting names no server (refused by the commands that need one). kafka-python would
    truncate a port to 16 bits (99999: port 34463), retry a port 0 or an empty item without end,
    and fail on a port that is no number without naming the option."""
    if servers == "":
        return None
    items = [part.strip() for part in servers.split(",")]
    for item in items:
        found = _SERVER.fullmatch(item)
        if found is None:
            problem = "is not HOST:PORT (an IPv6 address in brackets: [::1]:9092)"
        elif found["ipv6"] is not None and not _is_ipv6(found["ipv6"]):
            problem = f"has {found['ipv6']!r} in brackets, which is no IPv6 address"
        elif len(found["port"]) > 5 or not 1 <= int(found["port"]) <= 65535:   # (5000 digits: no int() either)
            problem = f"has port {found['port']}, outside 1..65535"
        else:
            continue
        if len(items) == 1:
            return f"must be {SERVERS_RULE}" if found is None else problem
        if not item:
            return "has an empty item (a stray comma?): each server must be HOST:PORT"
        return f"has {item!r}, which {problem}"
    return None


def _is_ipv6(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return False
    return True


def kafka_options(config: KafkaConnection) -> dict:
    """kafka-python keyword arguments for a consumer, producer or admin client (`config` checked its
    protocol, mechanism and credentials when it was built)."""
    protocol = config.security_protocol
    options = {"bootstrap_servers": config.servers or [""], "security_protocol": protocol,
               "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}
    if protocol.startswith("SASL"):
        assert config.sasl_password is not None   # (KafkaConnection refuses SASL without one)
        options.update(sasl_mechanism=config.sasl_mechanism, sasl_plain_username=config.sasl_username,
                       sasl_plain_password=config.sasl_password.reveal())
    if protocol.endswith("SSL"):
        for name in SSL_FILES:
            value = getattr(config, name)
            if value:
                options[name] = value
    return options
