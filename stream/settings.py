"""The stream commands' settings: frozen objects, each default written once.

`WorkerSettings` holds one object per concern: the Kafka connection, the engine
(`shopstream.config.EngineConfig`), the models it runs (`shopstream.lineup.Lineup`), the
checkpoints and the feature caps, plus the loop's own settings and its signing key.
`ProduceSettings`, `TopicsSettings` and `ModelsSettings` are the other stream commands'. The
command line derives their options from these fields (name, default, ``help`` metadata; ``flag``
when the option is spelled otherwise; see `shopstream.options`), and every option falls back to
a ``SHOPSTREAM_*`` variable.

>>> settings = WorkerSettings.from_options(window=600, topic="t", checkpoint_every=500)
>>> settings.engine.window, settings.topic, settings.checkpoints.every
(600.0, 't', 500)
>>> WorkerSettings.from_options(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="hunter2").kafka
KafkaConnection(bootstrap_servers='127.0.0.1:9092', security_protocol='SASL_PLAINTEXT', sasl_mechanism='PLAIN', \
sasl_username='u', sasl_password=<secret>, ssl_cafile=None, ssl_certfile=None, ssl_keyfile=None)
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import socket
from dataclasses import dataclass, field, fields, replace
from typing import Optional

from shopstream.config import ConfigError, EngineConfig, GeneratorSettings, check
from shopstream.events import MAX_FUTURE_SKEW
from shopstream.features import FeatureCaps
from shopstream.lineup import Lineup, PromotionPolicy
from shopstream.options import Settings, option_meta as _help, option_name, progress_bar, same_as
from shopstream.shared_learning import MODES as LEARNING_MODES
from shopstream.signing import key_setting

from .connection import KafkaConnection, Secret
from .owners import API_MARK
from .switch_interval import MAX_SECONDS as SWITCH_MAX_SECONDS


#: The Kafka clients a worker's data path can run on (`--kafka-client`).
KAFKA_CLIENTS = ("kafka-python", "confluent")
#: The garbage collector's modes (`--gc`, stream/gc_mode.py).
GC_MODES = ("auto", "throughput", "latency")
#: What a listening host must be: an empty one binds every interface (as 0.0.0.0 does), unasked.
HOST_RULE = "must name an address (0.0.0.0 for every interface, on purpose)"
#: Kafka's longest topic name, and its characters.
TOPIC_MAX = 249
_TOPIC = re.compile(r"[A-Za-z0-9._-]+")
#: The topics the code derives from a setting (stream/control_protocol.py, stream/checkpointing/kafka_store.py).
REPLIES, CHUNKS = "-replies", "-chunks"


def topic_problem(topic: str, suffix: str = "") -> Optional[str]:
    """Why `topic` is no Kafka topic name (also once `suffix` is appended, for a topic the code
    derives from it), or None: Kafka refuses such a name only after the client connected."""
    if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
        return f"must be a topic name: 1..{TOPIC_MAX} of A-Z a-z 0-9 . _ - (Kafka's rule), not '.' or '..'"
    if len(topic) + len(suffix) > TOPIC_MAX:
        derived = f" ({topic[:8]}...{suffix} is used too)" if suffix else ""
        return f"must be a topic name of at most {TOPIC_MAX - len(suffix)} characters, not {len(topic)}{derived}"
    return None


def check_topics(named) -> None:
    """`ConfigError` for the first (option, topic, suffix) of `named` that is no Kafka topic name."""
    for name, topic, suffix in named:
        problem = topic_problem(topic, suffix)
        if problem:
            raise ConfigError(name, topic, problem)


def check_connection(connection: KafkaConnection, needed: bool = True) -> None:
    """A command that connects names a broker (`needed`), and its TLS files can be read: refused
    at start, not by the client once it tries (an empty server list retries without end)."""
    if not connection.bootstrap_servers:
        if needed:
            raise ConfigError("bootstrap_servers", "", "must name a broker: HOST:PORT[,HOST:PORT...]")
        return
    connection.check_files()


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
        "checkpoint after this many events per partition (after a forked copy that used D s of CPU, also no sooner "
        "than 9 x D s)", flag="--checkpoint-every"))
    seconds: float = field(default=30.0, metadata=_help("... or after this many seconds", flag="--checkpoint-seconds"))
    background: str = field(default="auto", metadata=_help(
        "where periodic checkpoints are written: on, in a forked copy of the process while the loop goes on; "
        "off, in the loop; auto, pickled in the loop and fsynced by a thread (directory store), forked once "
        "pickling one took the loop over 0.2 s of CPU (a large state: a fork costs more than a small "
        "checkpoint). Revocation and shutdown checkpoints always wait",
        flag="--checkpoint-background", choices=("auto", "on", "off")))

    timeout: float = field(default=120.0, metadata=_help(
        "seconds a checkpoint written off the loop may take: then its writer is killed (or its sync abandoned) and the "
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
    recorded: str = field(default="processed", metadata=_help(
        "when a recorded score is answered: once the poll loop has processed its event (processed), or once its "
        "event is written to the events topic carrying the score and the features it was computed on, which the "
        "loop then records as they are (written: no wait behind the stream's backlog; README, 'Scoring API')",
        flag="--serve-recorded", choices=("processed", "written")))
    max_body: int = 16 * 1024  # bytes: a scoring request is a few hundred
    max_pending: int = 4096    # requests waiting for the poll loop; more are answered 429

    def __post_init__(self) -> None:
        if isinstance(self.token, str):
            object.__setattr__(self, "token", Secret(self.token) if self.token else None)
        check(self, (("port", -1 <= self.port <= 65535, "must be -1..65535"),
                     ("host", bool(self.host.strip()) and self.host == self.host.strip(), HOST_RULE),
                     ("timeout", self.timeout > 0, "must be > 0 seconds"),
                     ("max_connections", self.max_connections >= 1, "must be >= 1")))

    @property
    def enabled(self) -> bool:
        return self.port >= 0


@dataclass(frozen=True)
class WorkerSettings(Settings):
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
    kafka_client: str = field(default="kafka-python", metadata=_help(
        "client of the data path (events in; predictions and dead letters out): kafka-python (the default, fully "
        "tested) or confluent (librdkafka, faster; pip install 'shopstream[confluent]')",
        choices=KAFKA_CLIENTS))
    gc: str = field(default="auto", metadata=_help(
        "garbage collector: throughput (rare, long young collections), latency (short ones, and every object "
        "moved to the oldest generation every 5 s: no second-long collection of the middle generation; costs "
        "the kafka-python client throughput), auto (latency when serving the scoring API on --kafka-client "
        "confluent)", choices=GC_MODES))
    switch_interval: float = field(default=0.0, metadata=_help(
        "seconds the loop holds Python's GIL before a waiting thread takes it (sys.setswitchinterval); 0: auto, "
        "0.05 on kafka-python (its network threads wait for the loop's own pauses), or 0.001 when serving the "
        "scoring API, else Python's 0.005 (stream/switch_interval.py)"))
    signing_key: Optional[bytes] = key_setting()

    def __post_init__(self) -> None:
        _check_finite(self)
        check(self, (
            ("topic", bool(self.topic), "must be a topic name"),
            ("gc", self.gc in GC_MODES, f"must be one of {GC_MODES}"),
            ("switch_interval", self.switch_interval == 0 or 1e-6 <= self.switch_interval <= SWITCH_MAX_SECONDS,
             f"must be 0 (auto) or 0.000001..{SWITCH_MAX_SECONDS:g} seconds"),
            ("group", bool(self.group), "must be a consumer group name"),
            ("promotion_margin", self.promotion_margin >= 0, "must be >= 0 (ROC AUC points)"),
            ("promotion_min_resolved", self.promotion_min_resolved >= 1, "must be >= 1"),
            ("max_poll_records", self.max_poll_records >= 1, "must be >= 1"),
            ("session_timeout_ms", self.session_timeout_ms >= 1000, "must be >= 1000"),
            ("max_future_skew", self.max_future_skew >= 0, "must be >= 0 seconds"),
            ("rejoin_deadline", self.rejoin_deadline >= 0, "must be >= 0 seconds"),
            ("until_idle", self.until_idle >= 0, "must be >= 0 seconds"),
            ("metrics_port", -1 <= self.metrics_port <= 65535, "must be -1..65535"),
            ("metrics_host", bool(self.metrics_host.strip()) and self.metrics_host == self.metrics_host.strip(),
             HOST_RULE),
            ("max_events", self.max_events >= 0, "must be >= 0"),
            # librdkafka workers tell the group their API address after this mark (stream/owners.py)
            ("client_id", API_MARK not in (self.client_id or ""), f"must not contain {API_MARK!r} (it marks a "
             "scoring API address in a client id)"),
            ("learning", self.learning in LEARNING_MODES, f"must be one of {LEARNING_MODES}"),
            # A reset would put one partition's champion back alone, off the model every partition shares.
            ("learning", self.learning != "shared" or self.engine.drift_reaction != "reset",
             "shared cannot be used with --drift-reaction reset (one partition would leave the shared model)"),
        ))
        _check_topics(self)
        _check_kafka_client(self)
        check_connection(self.kafka)
        if self.auto_promote and self.lineup.promotion is None:
            # The promotion options are flat on the command line; the line-up carries the policy.
            policy = PromotionPolicy(margin=self.promotion_margin, min_resolved=self.promotion_min_resolved)
            object.__setattr__(self, "lineup", replace(self.lineup, promotion=policy))

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


def _check_kafka_client(settings: "WorkerSettings") -> None:
    """`confluent` (stream/confluent_clients.py) needs its package."""
    client = settings.kafka_client
    if client not in KAFKA_CLIENTS:
        raise ConfigError("kafka_client", client, f"must be one of {KAFKA_CLIENTS}")
    if client != "confluent":
        return
    if importlib.util.find_spec("confluent_kafka") is None:
        raise ConfigError("kafka_client", client, "needs the confluent-kafka package, not installed here: "
                          "pip install 'shopstream[confluent]'")


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
    if settings.learning == "shared":   # the learn log: written by every worker, read back by all
        if not settings.learn_topic:
            raise ConfigError("learn_topic", "", "must be a topic name (with --learning shared)")
        named.append(("learn_topic", settings.learn_topic))
    if settings.checkpoints.store == "kafka":
        if not settings.checkpoints.topic:
            raise ConfigError("checkpoint_topic", "", "must be a topic name (with --checkpoint-store kafka)")
        named += [("checkpoint_topic", settings.checkpoints.topic),
                  ("checkpoint_topic", f"{settings.checkpoints.topic}-chunks")]
    # Each a Kafka topic name, also with the suffix of the topic the code derives from it.
    suffixes = {"control_topic": REPLIES, "checkpoint_topic": CHUNKS}
    bases = {"control_topic": settings.control_topic, "checkpoint_topic": settings.checkpoints.topic}
    check_topics([(name, bases.get(name, topic), suffixes.get(name, "")) for name, topic in named])
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


@dataclass(frozen=True)
class ProduceSettings(Settings):
    """``shopstream produce``: events from a file, or from the generator, into the events topic."""

    kafka: KafkaConnection = KafkaConnection()
    generator: GeneratorSettings = GeneratorSettings()  # without --file
    topic: str = same_as(WorkerSettings, "topic")
    file: Optional[str] = field(default=None, metadata=_help("events file (.jsonl, .csv); without it, generate",
                                                             type=str))
    rate: float = field(default=0.0, metadata=_help("events per second (0: as fast as possible)"))
    validate: bool = field(default=False, metadata=_help("drop and count invalid events instead of sending them"))
    max_bad_rows: Optional[int] = field(default=None, metadata=_help(
        "with --validate: stop with an error after more bad rows than this (default: no limit, each is reported "
        "and skipped)", type=int))
    progress: bool = progress_bar()

    def __post_init__(self) -> None:
        check(self, (("topic", bool(self.topic), "must be a topic name"),
                     ("rate", math.isfinite(self.rate) and self.rate >= 0, "must be >= 0 (0: as fast as possible)"),
                     ("max_bad_rows", self.max_bad_rows is None or self.max_bad_rows >= 0, "must be >= 0")))
        check_topics([("topic", self.topic, "")])
        check_connection(self.kafka)


@dataclass(frozen=True)
class TopicsSettings(Settings):
    """``shopstream topics``: the topics a worker reads and writes, created before anything produces."""

    kafka: KafkaConnection = KafkaConnection()
    topic: str = same_as(WorkerSettings, "topic")
    predictions_topic: str = same_as(WorkerSettings, "predictions_topic")
    dead_letter_topic: str = same_as(WorkerSettings, "dead_letter_topic")
    control_topic: str = same_as(WorkerSettings, "control_topic")
    partitions: int = field(default=4, metadata=_help("partitions of the events and predictions topics"))
    grow_partitions: bool = field(default=False, metadata=_help(
        "add partitions to existing events and predictions topics with fewer than --partitions (keys move to "
        "other partitions: README, 'Adding partitions'); without it an existing topic is left as it is"))

    def __post_init__(self) -> None:
        check(self, (("topic", bool(self.topic), "must be a topic name"),
                     ("partitions", 1 <= self.partitions <= 10_000, "must be 1..10000")))
        # ('' disables a predictions or control topic: none is created)
        check_topics([("topic", self.topic, ""), *[(name, getattr(self, name), "") for name in (
            "predictions_topic", "dead_letter_topic") if getattr(self, name)],
            *([("control_topic", self.control_topic, REPLIES)] if self.control_topic else [])])
        check_connection(self.kafka)


MODEL_ACTIONS = ("list", "promote", "rollback")


@dataclass(frozen=True)
class ModelsSettings(Settings):
    """``shopstream models ACTION [TARGET]``: list the models, or promote / roll back on running workers."""

    action: str = "list"                # positional: list, promote or rollback
    target: Optional[str] = None        # positional: a model name (promote) or an artifact version (rollback)
    kafka: KafkaConnection = KafkaConnection()
    control_topic: str = same_as(WorkerSettings, "control_topic", help="topic the workers read commands from")
    topic: str = same_as(WorkerSettings, "topic", help="events topic of the workers a command is for (its partitions "
                                                       "are the ones to hear from)")
    artifacts: Optional[str] = field(default=None, metadata=_help(
        "bootstrap output: versions to list or roll back to", type=str))
    checkpoint_store: str = same_as(CheckpointSettings, "store", help="where the workers keep checkpoints (list)")
    checkpoints: Optional[str] = field(default=None, metadata=_help(
        "checkpoint directory (list, with --checkpoint-store dir)", type=str))
    checkpoint_topic: str = same_as(CheckpointSettings, "topic", help=(
        "checkpoint topic (list, with --checkpoint-store kafka)"))
    group: str = same_as(WorkerSettings, "group", help="the workers' consumer group: the one a command is for, whose "
                                                       "replies count (and list's, with --checkpoint-store kafka)")
    partition: Optional[int] = field(default=None, metadata=_help("only this partition of --topic (default: all)",
                                                                  type=int))
    wait: bool = field(default=True, metadata=_help("wait until every partition applied or rejected the command"))
    wait_timeout: float = field(default=30.0, metadata=_help("seconds to wait for the partitions' replies"))
    signing_key: Optional[bytes] = key_setting()

    def __post_init__(self) -> None:
        check(self, (("action", self.action in MODEL_ACTIONS, f"must be one of {MODEL_ACTIONS}"),
                     ("target", self.action == "list" or bool(self.target), f"is required by {self.action}: a model "
                      "name (promote) or an artifact version (rollback)"),
                     ("wait_timeout", math.isfinite(self.wait_timeout) and self.wait_timeout > 0,
                      "must be > 0 seconds"),
                     # (-1 named no partition: no worker answered, and --wait said "no reply" after 30 s)
                     ("partition", self.partition is None or self.partition >= 0, "must be a partition number, >= 0"),
                     ("group", bool(self.group), "must be a consumer group name"),
                     ("topic", self.action == "list" or bool(self.topic), f"is required by {self.action}: the events "
                      "topic of the workers the command is for"),
                     ("checkpoint_store", self.checkpoint_store in ("dir", "kafka"), "must be dir or kafka")))
        check_topics([*([("topic", self.topic, "")] if self.topic else []),
                      *([("control_topic", self.control_topic, REPLIES)] if self.control_topic else []),
                      *([("checkpoint_topic", self.checkpoint_topic, CHUNKS)] if self.checkpoint_store == "kafka"
                        else [])])
        # `models list --bootstrap-servers ''`: the artifacts and a checkpoint directory only, no broker
        check_connection(self.kafka, needed=self.action != "list" or self.checkpoint_store == "kafka")


__all__ = ["CheckpointSettings", "ConfigError", "KafkaConnection", "ModelsSettings", "PARTS", "ProduceSettings",
           "Secret", "ServeSettings", "TopicsSettings", "WorkerSettings", "option_name"]
