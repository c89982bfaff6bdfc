"""Kafka client options shared by every command: servers, and SASL / SSL settings.

`kafka_options(config)` reads the same attribute names from an argparse namespace or
from `WorkerSettings`, so each command configures kafka-python the same way. The
password is passed to the client and nowhere else: it is not in a repr, a log line
or `--help`.

>>> from types import SimpleNamespace
>>> kafka_options(SimpleNamespace(bootstrap_servers="a:9092,b:9092", security_protocol="SASL_SSL",
...     sasl_mechanism="SCRAM-SHA-256", sasl_username="u", sasl_password="p", ssl_cafile="ca.pem"))["sasl_mechanism"]
'SCRAM-SHA-256'
"""

from __future__ import annotations

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# kafka-python 3.0.12 backs off up to 30 s (the Java client: 1 s), metadata refreshes
# included. After a broker restart its fetches carry a stale leader epoch and are
# fenced until the next metadata refresh: a worker stalled 17-28 s after every outage.
RECONNECT_BACKOFF_MAX_MS = 1000


def kafka_options(config) -> dict:
    """kafka-python keyword arguments for a consumer, producer or admin client."""
    protocol = getattr(config, "security_protocol", None) or "PLAINTEXT"
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(f"security protocol {protocol!r}: choose from {SECURITY_PROTOCOLS}")
    options = {"bootstrap_servers": config.bootstrap_servers.split(","), "security_protocol": protocol,
               "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}
    if protocol.startswith("SASL"):
        mechanism = getattr(config, "sasl_mechanism", None) or "PLAIN"
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(f"SASL mechanism {mechanism!r}: choose from {SASL_MECHANISMS}")
        username, password = getattr(config, "sasl_username", None), getattr(config, "sasl_password", None)
        if not username or not password:
            raise ValueError(f"{protocol} needs --sasl-username and --sasl-password (or SHOPSTREAM_SASL_PASSWORD)")
        options.update(sasl_mechanism=mechanism, sasl_plain_username=username, sasl_plain_password=password)
    if protocol.endswith("SSL"):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(config, name, None)
            if value:
                options[name] = value
    return options
