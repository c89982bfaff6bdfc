"""Every outside party a worker talks to, built in one place.

`KafkaClients` makes the worker's consumer, producer, checkpoint store, control channel
and corrupt-batch skipper from its settings. The worker only ever asks this factory, so
a test hands it fakes and runs the whole loop in milliseconds (tests/test_worker_parts.py),
while the real-broker tests use this one.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

from kafka import KafkaConsumer, KafkaProducer
from kafka import __version__ as kafka_version

from .checkpointing.kafka_store import KafkaCheckpointStore
from .checkpointing.stores import CheckpointStore, DirectoryCheckpointStore
from .connection import kafka_options
from .control_worker import ControlChannel
from .corrupt import CorruptBatchSkipper
from .fetch_idle import mend_idle_fetch
from .group_join import mend_group_join
from .membership import PARTITION_DISCOVERY_MS
from .owners import Owners, OwnersAssignor, client_id_with_address
from .record_reader import KAFKA_PYTHON, missing_codecs, read_records_in_one_pass
from .settings import WorkerSettings

log = logging.getLogger(__name__)

#: kafka-python 3.0.12 warns of every step of its IO loop longer than 0.1 s. Under load that is
#: several lines a second, enough to fill a 64 KiB stderr pipe in a couple of minutes and then
#: block the process on its next log line. Steps shorter than this are dropped; a longer one is a
#: real stall and is kept.
SLOW_STEP_LOGGED_FROM = 1.0
#: The kafka-python producer's batch size (`KafkaClients.producer` says why it is not the default's 16 KiB).
OUTPUT_BATCH_BYTES = 256 * 1024
_SLOW_STEP = re.compile(r"ran for (\d+(?:\.\d+)?)s \(>")


class SlowStepFilter(logging.Filter):
    """Drops kafka-python's slow-step warnings under `SLOW_STEP_LOGGED_FROM` seconds.

    >>> record = logging.LogRecord("kafka.net.selector", logging.WARNING, "", 0,
    ...                            "Task <T> ran for 0.104s (>0.100s threshold). It is blocking", None, None)
    >>> SlowStepFilter().filter(record)
    False
    >>> record.msg = "Task <T> ran for 101.065s (>0.100s threshold). It is blocking"
    >>> SlowStepFilter().filter(record)
    True
    """

    def filter(self, record: logging.LogRecord) -> bool:
        found = _SLOW_STEP.search(str(record.msg))
        return found is None or float(found.group(1)) >= SLOW_STEP_LOGGED_FROM


class KafkaClients:
    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.options = kafka_options(settings.kafka)
        # Kafka's range assignment, carrying where each member serves the scoring API (owners.py)
        self.assignor = OwnersAssignor("", Owners())

    def consumer(self) -> KafkaConsumer:
        s = self.settings
        if s.kafka_client == "confluent":   # --kafka-client confluent: the data path on librdkafka
            from .confluent_clients import ConfluentConsumer, consumer_config, librdkafka_options
            config, watch = consumer_config(s, self.options), None
            if self.assignor.address:   # serving the API: the group learns where through client ids
                from .confluent_clients import LIBRDKAFKA_LOG
                from .group_owners import GroupOwnersWatch
                address = self.assignor.address.decode("utf-8", "replace")
                config["client.id"] = client_id_with_address(s.name, address)
                admin = {**librdkafka_options(self.options), "client.id": f"{s.name}-owners", "logger": LIBRDKAFKA_LOG}
                watch = GroupOwnersWatch(admin, s.group, s.topic, self.assignor.owners)
            return ConfluentConsumer(config, s.max_poll_records, owners_watch=watch)
        consumer = KafkaConsumer(
            group_id=s.group,
            client_id=s.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.max_poll_records,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(500, s.session_timeout_ms // 5),
            partition_assignment_strategy=[self.assignor],
            metadata_max_age_ms=PARTITION_DISCOVERY_MS,   # partitions added to the topic: found in 30 s
            **self.options,
        )
        if not mend_group_join(consumer):   # a join begun must finish (group_join.py says why)
            log.warning("kafka-python %s: its group join is not mended (stream/group_join.py); a worker may "
                        "drop out of its group after a rebalance until --rejoin-deadline", kafka_version)
        if not mend_idle_fetch(consumer):   # records buffered are not slept on (fetch_idle.py says why)
            log.warning("kafka-python %s: its fetcher is not mended (stream/fetch_idle.py); a poll may sleep "
                        "100 ms with records buffered", kafka_version)
        if not read_records_in_one_pass(consumer):   # 1.2 us a record, not 3.5 (record_reader.py says how)
            log.warning("kafka-python %s: its records are read by its own reader (stream/record_reader.py reads "
                        "%s's), about 2 microseconds more per record", kafka_version, KAFKA_PYTHON)
        missing = missing_codecs()
        if missing:   # installed without shopstream's dependencies
            log.warning("kafka-python finds no library for %s here: batches a producer compressed with %s are "
                        "dead-lettered unread (pip install python-snappy lz4 zstandard)", ", ".join(missing),
                        " or ".join(missing))
        return consumer

    def broker_probe(self) -> KafkaConsumer:
        """The broker watch's own connection (broker_watch.py says why): no group, no fetches."""
        return KafkaConsumer(client_id=f"{self.settings.name}-probe", enable_auto_commit=False, **self.options)

    def producer(self) -> KafkaProducer:
        # A short linger: predictions are for acting on now (20 ms added ~25 ms to p50 in BENCHMARKS.md).
        # max_block_ms: a send waits at most 10 s for a topic's metadata (outputs.SEND_TRIES tries),
        # not 60 s, so a topic that never appears holds a checkpoint well inside max_poll_interval_ms.
        # batch_size: a request carries one batch per partition, and each request waits for the GIL the
        # loop holds; at the default 16 KiB, a worker working off a backlog outran its sender thread
        # until a checkpoint's wait for acknowledged outputs failed (5 s; BENCHMARKS.md, stop 47).
        # 256 KiB stays well under the broker's 1 MB limit on a batch (message.max.bytes).
        if self.settings.kafka_client == "confluent":
            from .confluent_clients import ConfluentProducer, producer_config
            return ConfluentProducer(producer_config(self.settings, self.options))
        return KafkaProducer(client_id=self.settings.name, linger_ms=5, batch_size=OUTPUT_BATCH_BYTES,
                             acks="all", max_block_ms=10_000, **self.options)

    def score_producer(self) -> KafkaProducer:
        # The scoring API writes its requests to the events topic; each waits on its send: no linger.
        if self.settings.kafka_client == "confluent":
            from .confluent_clients import ConfluentProducer, score_producer_config
            return ConfluentProducer(score_producer_config(self.settings, self.options), serve_reports=True)
        return KafkaProducer(client_id=f"{self.settings.name}-api", linger_ms=0, acks="all", **self.options)

    def checkpoint_store(self) -> CheckpointStore:
        s = self.settings
        key = s.signing_key   # signs and verifies checkpoints (None: a sha256 only)
        if s.checkpoints.store == "kafka":
            return KafkaCheckpointStore(self.options, s.checkpoints.topic, group=s.group, signing_key=key)
        return DirectoryCheckpointStore(s.checkpoints.directory, s.group, signing_key=key)

    def control(self) -> Optional[ControlChannel]:
        s = self.settings
        if not s.control_topic:
            return None
        return ControlChannel(self.options, s.control_topic, s.artifacts, s.name, s.signing_key,
                              group=s.group, events_topic=s.topic)  # not opened yet; commands name their group

    def corrupt_skipper(self, outputs) -> CorruptBatchSkipper:
        if self.settings.kafka_client == "confluent":   # its errors name the unreadable record's offset
            from .confluent_clients import ConfluentCorruptSkipper
            return ConfluentCorruptSkipper(self.options, outputs)
        return CorruptBatchSkipper(self.options, outputs)
