"""A worker's settings: frozen objects, each default written once.

`WorkerSettings` holds one object per concern: the Kafka connection, the engine
(`shopstream.config.EngineConfig`), the models it runs (`shopstream.lineup.Lineup`), the
checkpoints and the feature caps, plus the loop's own settings. The command line derives
its options from these fields (name, default, ``help`` metadata; ``flag`` when the option
is spelled otherwise), and every option falls back to a ``SHOPSTREAM_*`` variable.

>>> settings = WorkerSettings.from_options(window=600, topic="t", checkpoint_every=500)
>>> settings.engine.window, settings.topic, settings.checkpoints.every
(600.0, 't', 500)
>>> WorkerSettings.from_options(sasl_password="hunter2").kafka
KafkaConnection(bootstrap_servers='127.0.0.1:9092', security_protocol='PLAINTEXT', sasl_mechanism='PLAIN', \
sasl_username=None, sasl_password=<secret>, ssl_cafile=None, ssl_certfile=None, ssl_keyfile=None)
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Optional

from shopstream.config import ConfigError, EngineConfig, check
from shopstream.events import MAX_FUTURE_SKEW
from shopstream.features import FeatureCaps
from shopstream.lineup import Lineup
from shopstream.shared_learning import MODES as LEARNING_MODES
from shopstream.lineup import PromotionPolicy

from .connection import KafkaConnection, Secret


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class CheckpointSettings:
    """Where and how often partition state is saved."""

    store: str = field(default="dir", metadata=_help(
        "dir: files under --checkpoints; kafka: a compacted topic, so workers on other machines can take "
        "partitions over", flag="--checkpoint-store", choices=("dir", "kafka")))
    directory: str = field(default="checkpoints", metadata=_help(
        "checkpoint directory (with --checkpoint-store dir)", flag="--checkpoints"))
    topic: str = field(default="shopstream-checkpoints", metadata=_help(
        "compacted checkpoint topic (with --checkpoint-store kafka)", flag="--checkpoint-topic"))
    every: int = field(default=10_000, metadata=_help(
        "checkpoint after this many events per partition", flag="--checkpoint-every"))
    seconds: float = field(default=30.0, metadata=_help("... or after this many seconds", flag="--checkpoint-seconds"))
    background: str = field(default="auto", metadata=_help(
        "where periodic checkpoints are written: on, in a forked copy of the process while the loop goes on; "
        "off, in the loop; auto, forked once one written in the loop took over 0.2 s (a large state: a fork "
        "costs more than a small checkpoint). Revocation and shutdown checkpoints always wait",
        flag="--checkpoint-background", choices=("auto", "on", "off")))

    timeout: float = field(default=120.0, metadata=_help(
        "seconds a checkpoint written in the background may take: then its writer is killed and the "
        "checkpoint counts as failed (partition paused, retried)", flag="--checkpoint-timeout"))

    def __post_init__(self) -> None:
        check(self, (("every", self.every >= 1, "must be >= 1"),
                     ("seconds", self.seconds > 0, "must be > 0 seconds"),
                     ("timeout", self.timeout > 0, "must be > 0 seconds"),
                     ("background", self.background in ("auto", "on", "off"), "must be auto, on or off")))


@dataclass(frozen=True)
class ServeSettings:
    """The scoring API (`stream/serving.py`): off unless --serve-port is given."""

    port: int = field(default=-1, metadata=_help(
        "scoring API port, POST /score (-1: no API, 0: any free port)", flag="--serve-port"))
    host: str = field(default="127.0.0.1", metadata=_help(
        "scoring API host (loopback unless exposed on purpose: see README)", flag="--serve-host"))
    advertise: Optional[str] = field(default=None, metadata=_help(
        "HOST:PORT other workers forward requests for this worker's partitions to (default: the host, or this "
        "machine's name when the host is 0.0.0.0, and the port)", flag="--serve-advertise", type=str))
    token: Optional[Secret] = field(default=None, metadata=_help(
        "shared token a request must send as 'Authorization: Bearer TOKEN' (prefer the environment variable)",
        flag="--serve-token", type=str, secret=True))
    timeout: float = field(default=5.0, metadata=_help(
        "seconds a client may take to send a request, and a request may wait for its answer",
        flag="--serve-timeout"))
    max_connections: int = field(default=1024, metadata=_help(
        "open API connections; more are answered 429 and closed", flag="--serve-max-connections"))
    max_body: int = 16 * 1024  # bytes: a scoring request is a few hundred
    max_pending: int = 4096    # requests waiting for the poll loop; more are answered 429

    def __post_init__(self) -> None:
        if isinstance(self.token, str):
            object.__setattr__(self, "token", Secret(self.token) if self.token else None)
        check(self, (("port", -1 <= self.port <= 65535, "must be -1..65535"),
                     ("timeout", self.timeout > 0, "must be > 0 seconds"),
                     ("max_connections", self.max_connections >= 1, "must be >= 1")))

    @property
    def enabled(self) -> bool:
        return self.port >= 0


@dataclass(frozen=True)
class WorkerSettings:
    kafka: KafkaConnection = KafkaConnection()
    engine: EngineConfig = EngineConfig()
    lineup: Lineup = Lineup()
    checkpoints: CheckpointSettings = CheckpointSettings()
    caps: FeatureCaps = FeatureCaps()
    serve: ServeSettings = ServeSettings()

    topic: str = field(default="shop-events", metadata=_help("events topic"))
    group: str = field(default="shopstream", metadata=_help("consumer group"))
    predictions_topic: str = field(default="shop-predictions", metadata=_help(
        "topic for published predictions ('' to disable)"))
    prediction_format: str = field(default="batch", metadata=_help(
        "batch: one record per polled batch of a partition (a JSON array, header shopstream.format: "
        "predictions-batch/1); event: one record per prediction", choices=("batch", "event")))
    dead_letter_topic: str = field(default="shop-events-dlq", metadata=_help(
        "topic for messages that fail to decode or validate"))
    control_topic: str = field(default="shop-control", metadata=_help(
        "topic of `shopstream models` commands ('' to disable)"))
    artifacts: Optional[str] = field(default=None, metadata=_help(
        "bootstrap output (its DEFAULT model starts new partitions)", type=str))
    adopt_artifact_settings: bool = field(default=False, metadata=_help(
        "run new partitions under the feature set, window and lateness their artifact was trained with, "
        "instead of refusing to start when these options differ"))
    auto_promote: bool = field(default=True, metadata=_help("promote a challenger that is significantly better"))
    promotion_margin: float = field(default=PromotionPolicy.margin, metadata=_help(
        "exact ROC AUC lead a challenger must also show on the window to be promoted (the test is significance)"))
    promotion_min_resolved: int = field(default=PromotionPolicy.min_resolved, metadata=_help(
        "paired resolved predictions before a promotion"))
    metrics_host: str = field(default="127.0.0.1", metadata=_help("metrics endpoint host (compose sets 0.0.0.0)"))
    metrics_port: int = field(default=9108, metadata=_help("metrics endpoint port (0: any free port, -1: none)"))
    max_events: int = field(default=0, metadata=_help("stop after this many events (0: never)"))
    until_idle: float = field(default=0.0, metadata=_help(
        "stop once nothing was read for this many seconds while able to read and every owned partition is "
        "read to its end (0: never)"))
    client_id: Optional[str] = field(default=None, metadata=_help("Kafka client id (default: hostname-pid)", type=str))
    session_timeout_ms: int = field(default=10_000, metadata=_help(
        "how long the group waits for a silent worker before moving its partitions"))
    # Longer than any legitimate join (bounded by the 300 s rebalance timeout): then rebuild the consumer.
    rejoin_deadline: float = field(default=360.0, metadata=_help(
        "seconds a group join may take before the Kafka consumer is rebuilt (0: never; legitimate joins end "
        "within the 300 s rebalance timeout)"))
    max_poll_records: int = 1000
    max_future_skew: float = field(default=MAX_FUTURE_SKEW, metadata=_help(
        "dead-letter events dated more than this many seconds after their Kafka record time (a fast client "
        "clock would drag event time into the future)"))
    force_fresh_start: bool = field(default=False, metadata=_help(
        "start a partition over (from its artifact, offset 0) when its checkpoint is refused, instead of "
        "stopping"))
    learning: str = field(default="partition", metadata=_help(
        "partition: each partition's models learn its own labels; shared: every partition's models learn the "
        "labels of all partitions, through the learn topic (QUALITY.md: scaling out no longer costs quality)",
        choices=LEARNING_MODES))
    learn_topic: str = field(default="shop-learn", metadata=_help(
        "the learn log with --learning shared (one partition; created if missing)"))
    log_level: str = field(default="INFO", metadata=_help(
        "DEBUG shows the Kafka client's own INFO lines too", choices=("DEBUG", "INFO", "WARNING", "ERROR")))

    def __post_init__(self) -> None:
        _check_finite(self)
        check(self, (
            ("topic", bool(self.topic), "must be a topic name"),
            ("group", bool(self.group), "must be a consumer group name"),
            ("promotion_margin", self.promotion_margin >= 0, "must be >= 0 (ROC AUC points)"),
            ("promotion_min_resolved", self.promotion_min_resolved >= 1, "must be >= 1"),
            ("max_poll_records", self.max_poll_records >= 1, "must be >= 1"),
            ("session_timeout_ms", self.session_timeout_ms >= 1000, "must be >= 1000"),
            ("max_future_skew", self.max_future_skew >= 0, "must be >= 0 seconds"),
            ("rejoin_deadline", self.rejoin_deadline >= 0, "must be >= 0 seconds"),
            ("until_idle", self.until_idle >= 0, "must be >= 0 seconds"),
            ("metrics_port", -1 <= self.metrics_port <= 65535, "must be -1..65535"),
            ("max_events", self.max_events >= 0, "must be >= 0"),
            ("learning", self.learning in LEARNING_MODES, f"must be one of {LEARNING_MODES}"),
            # A reset would put one partition's champion back alone, off the model every partition shares.
            ("learning", self.learning != "shared" or self.engine.drift_reaction != "reset",
             "shared cannot be used with --drift-reaction reset (one partition would leave the shared model)"),
        ))
        _check_topics(self)
        if self.auto_promote and self.lineup.promotion is None:
            # The promotion options are flat on the command line; the line-up carries the policy.
            policy = PromotionPolicy(margin=self.promotion_margin, min_resolved=self.promotion_min_resolved)
            object.__setattr__(self, "lineup", replace(self.lineup, promotion=policy))

    @classmethod
    def from_options(cls, **options: Any) -> "WorkerSettings":
        """From flat option names (as the command line spells them, ``_`` for ``-``), each
        routed to the object that owns it; an unknown name is an error."""
        return cls.from_mapping(options, strict=True)

    @classmethod
    def from_args(cls, args) -> "WorkerSettings":
        """From an argparse namespace (names that are not settings, like ``command``, are ignored)."""
        return cls.from_mapping(vars(args), strict=False)

    @classmethod
    def from_mapping(cls, given: Mapping[str, Any], strict: bool) -> "WorkerSettings":
        given = {k: v for k, v in given.items() if v is not None}
        used: set = set()
        parts = {}
        for name, part in PARTS.items():
            values = {f.name: given[key] for f in fields(part) if (key := option_name(part, f)) in given}
            used |= {option_name(part, f) for f in fields(part)}
            if part is FeatureCaps:  # its own check (a ValueError) names the field, not the option
                for f in fields(part):
                    if not values.get(f.name, f.default) > 0:
                        raise ConfigError(option_name(part, f), values[f.name], "must be > 0")
            try:
                parts[name] = part(**_tuples(values))
            except ConfigError as exc:  # named as the command line spells it (--checkpoint-seconds)
                flat = {f.name: option_name(part, f) for f in fields(part)}
                raise ConfigError(flat.get(exc.name, exc.name), exc.value, exc.rule) from None
        own = {f.name: given[f.name] for f in fields(cls) if f.name not in PARTS and f.name in given}
        used |= set(own)
        unknown = sorted(set(given) - used)
        if strict and unknown:
            raise TypeError(f"unknown worker settings: {unknown}")
        return cls(**parts, **own)

    @property
    def name(self) -> str:
        return self.client_id or f"{socket.gethostname()}-{os.getpid()}"


def _check_finite(settings: "WorkerSettings") -> None:
    """NaN or infinity in any number setting is a mistake (a NaN compares false with every bound;
    an infinite window or lateness holds every prediction open forever): refused, by option name."""
    parts = [(part, getattr(settings, name)) for name, part in PARTS.items()] + [(WorkerSettings, settings)]
    for part, obj in parts:
        for f in fields(part):
            value = getattr(obj, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(option_name(part, f), value, "must be a finite number")


def _check_topics(settings: "WorkerSettings") -> None:
    """Every topic a worker reads or writes is its own: a dead-letter, predictions or control
    topic equal to the events topic (or to each other) makes the worker read what it writes, one
    bad message becoming dead letters without end. Checked in the order a reader would look."""
    named = [("topic", settings.topic)]
    if not settings.dead_letter_topic:
        raise ConfigError("dead_letter_topic", settings.dead_letter_topic, "must be a topic name (messages that "
                          "fail to decode go there)")
    named.append(("dead_letter_topic", settings.dead_letter_topic))
    if settings.predictions_topic:
        named.append(("predictions_topic", settings.predictions_topic))
    if settings.control_topic:
        named += [("control_topic", settings.control_topic),
                  ("control_topic", f"{settings.control_topic}-replies")]
    if settings.checkpoints.store == "kafka":
        if not settings.checkpoints.topic:
            raise ConfigError("checkpoint_topic", "", "must be a topic name (with --checkpoint-store kafka)")
        named += [("checkpoint_topic", settings.checkpoints.topic),
                  ("checkpoint_topic", f"{settings.checkpoints.topic}-chunks")]
    seen: dict = {}
    for name, topic in named:
        if topic in seen and seen[topic] != name:
            other = seen[topic]
            value = getattr(settings, name, None) if name != "checkpoint_topic" else settings.checkpoints.topic
            both = f" ({topic!r} would be both)" if topic != value else ""
            raise ConfigError(name, value, f"must differ from --{other.replace('_', '-')}{both}: the worker would "
                              "read what it writes")
        seen.setdefault(topic, name)


#: The objects a worker's settings are made of, by attribute name.
PARTS = {"kafka": KafkaConnection, "engine": EngineConfig, "lineup": Lineup, "checkpoints": CheckpointSettings,
         "caps": FeatureCaps, "serve": ServeSettings}


def option_name(part, f) -> str:
    """The flat option name of a field: its ``flag`` metadata (e.g. ``--checkpoint-every``),
    else ``caps``' fields as ``max_<name>`` (``session_ttl`` as is), else its own name."""
    flag = f.metadata.get("flag")
    if flag:
        return flag.lstrip("-").replace("-", "_")
    if part is FeatureCaps:
        return f.name if f.name == "session_ttl" else f"max_{f.name}"
    return f.name


def _tuples(values: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


__all__ = ["CheckpointSettings", "ConfigError", "KafkaConnection", "PARTS", "Secret", "ServeSettings", "WorkerSettings",
           "option_name"]
