"""`shopstream topics`: create the events, predictions and dead-letter topics (idempotent).

Run once before anything produces, so the events topic gets its partition count
rather than the broker's auto-creation default.
"""

from __future__ import annotations

import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .connection import kafka_options
from .control_protocol import CONTROL_TOPIC_CONFIGS
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
    created = create_topics(kafka_options(settings.kafka), {
        settings.topic: settings.partitions,
        settings.predictions_topic: settings.partitions,
        settings.dead_letter_topic: 1,
        settings.control_topic: 1,
        f"{settings.control_topic}-replies": 1,   # the workers' answers to control commands
    }, configs={settings.control_topic: CONTROL_TOPIC_CONFIGS})   # commands stamped by the broker
    print(f"created topics: {', '.join(created) or 'none (all existed)'}")
    return 0
