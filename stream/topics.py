"""`shopstream topics`: create the events, predictions and dead-letter topics (idempotent).

Run once before anything produces, so the events topic gets its partition count
rather than the broker's auto-creation default.
"""

from __future__ import annotations

import time

from kafka import KafkaAdminClient
from kafka.admin import NewPartitions, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .connection import kafka_options
from .control_protocol import CONTROL_TOPIC_CONFIGS
from .membership import moved_share
from .settings import TopicsSettings


def create_topics(options: dict, topics: dict[str, int], timeout: float = 30.0,
                  configs: dict[str, dict] | None = None) -> list[str]:
    """Create each topic with its partition count (and topic configs) unless it exists;
    return those created. Retries while the broker is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(request_timeout_ms=10_000, **options)
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Kafka broker answered on {options['bootstrap_servers']} "
                                   f"within {timeout:.0f} s") from None
            time.sleep(1.0)
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, partitions, 1, topic_configs=(configs or {}).get(name, {}))
                  for name, partitions in topics.items() if name and name not in existing]
        created = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass  # another replica of this command won the race
        return created
    finally:
        admin.close()


def topics_command(settings: TopicsSettings) -> int:
    options = kafka_options(settings.kafka)
    created = create_topics(options, {
        settings.topic: settings.partitions,
        settings.predictions_topic: settings.partitions,
        settings.dead_letter_topic: 1,
        # the workers' answers to control commands beside it ('' disables both: no "-replies" topic alone)
        **({settings.control_topic: 1, f"{settings.control_topic}-replies": 1} if settings.control_topic else {}),
    }, configs={settings.control_topic: CONTROL_TOPIC_CONFIGS})   # commands stamped by the broker
    print(f"created topics: {', '.join(created) or 'none (all existed)'}")
    # An existing topic keeps its partitions: say so when they are not what was asked (changing
    # SHOPSTREAM_PARTITIONS and starting again did nothing, silently), and grow them only on request.
    sized = [name for name in (settings.topic, settings.predictions_topic) if name and name not in created]
    if sized:
        _check_partitions(options, sized, settings.partitions, settings.grow_partitions)
    return 0   # also when a topic's size differs: it exists and works (compose's workers wait for this)


def _check_partitions(options: dict, topics: list[str], wanted: int, grow: bool) -> None:
    """Compare existing topics' partition counts with `wanted`, and say where they differ; add
    partitions when `grow`."""
    admin = KafkaAdminClient(request_timeout_ms=10_000, **options)
    try:
        counts = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(topics) if d["error_code"] == 0}
        short = {name: n for name, n in counts.items() if n < wanted}
        for name, n in counts.items():
            if n > wanted:
                print(f"{name} has {n} partitions, more than the {wanted} asked: Kafka cannot remove partitions, "
                      "left as it is")
        if short and grow:
            admin.create_partitions({name: NewPartitions(wanted) for name in short})
            for name, n in short.items():
                print(f"{name}: {n} -> {wanted} partitions; about {_moved(n, wanted)} of keys now map to another "
                      "partition (README, 'Adding partitions')")
            return
        for name, n in short.items():
            print(f"{name} has {n} partitions, not the {wanted} asked: an existing topic is left as it is. "
                  f"--grow-partitions adds them (about {_moved(n, wanted)} of keys then move to another "
                  "partition: README, 'Adding partitions')")
    finally:
        admin.close()


def _moved(before: int, now: int) -> str:
    share = moved_share(before, now)
    return f"{share:.0%}" if share is not None else "most"
