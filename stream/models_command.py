"""`shopstream models`: list the models, or promote / roll back on running workers (the
operator's end of `control.py`'s protocol), from `ModelsSettings`.

``list`` reads the artifacts, the workers' checkpoints and, when a broker answers, their
latest replies; ``promote`` and ``rollback`` append a command to the control topic (signed
with the settings' key when there is one) and, with ``--wait``, print each partition's reply.
"""

from __future__ import annotations

import sys

from shopstream.artifacts import find_version
from shopstream.signing import using

from .connection import kafka_options
from .control import (Command, Reply, _end_offset, _partitions, check_target, list_models, read_replies,
                      replies_topic, send_command)
from .settings import ModelsSettings
from .topics import create_topics


def models_command(settings: ModelsSettings) -> int:
    # control.py still reads its key through `signing_key()`: the settings' key is the one it gets.
    with using(settings.signing_key):
        return _run(settings)


def _run(s: ModelsSettings) -> int:
    options = kafka_options(s.kafka)
    if s.action == "list":
        return _list(s, options)
    assert s.target is not None  # ModelsSettings requires it for promote and rollback
    check_target(s.action, s.target)
    if s.action == "rollback" and s.artifacts:
        find_version(s.artifacts, s.target)  # fail here, not silently in every worker
    create_topics(options, {s.control_topic: 1, replies_topic(s.control_topic): 1})
    replies_end = _end_offset(options, replies_topic(s.control_topic))
    offset = send_command(options, s.control_topic, Command(s.action, s.target, s.partition))
    scope = "every partition" if s.partition is None else f"partition {s.partition}"
    print(f"sent {s.action} {s.target} for {scope} (control offset {offset})")
    if not s.wait:
        print("running workers apply it within a second, stopped ones when they resume")
        return 0
    wanted = _partitions(options, s.topic) if s.partition is None else {s.partition}
    answered: dict[int, Reply] = {}

    def complete(replies):
        for reply in replies:
            if reply.command == offset:
                answered.setdefault(reply.partition, reply)
        return wanted <= set(answered)

    read_replies(options, s.control_topic, replies_end, until=complete, timeout=s.wait_timeout)
    for partition in sorted(wanted | set(answered)):
        reply = answered.get(partition)
        if reply is None:
            print(f"  partition {partition}: no reply in {s.wait_timeout:g} s (no worker running it?)")
        else:
            detail = f": {reply.reason}" if reply.reason else f" (champion {reply.model} {reply.version})"
            print(f"  partition {partition}: {reply.outcome}{detail}")
    ok = wanted <= set(answered) and all(r.outcome == "applied" for r in answered.values())
    return 0 if ok else 1


def _list(s: ModelsSettings, options: dict) -> int:
    from .checkpoints import CheckpointStore, DirectoryCheckpointStore

    store: CheckpointStore | None = None
    if s.checkpoint_store == "kafka":
        from .kafka_store import KafkaCheckpointStore

        store = KafkaCheckpointStore(options, s.checkpoint_topic, group=s.group)
    elif s.checkpoints:
        store = DirectoryCheckpointStore(s.checkpoints, create=False)
    reported = None
    if s.kafka.bootstrap_servers:
        try:
            reported = {r.partition: r for r in read_replies(options, s.control_topic, timeout=10)}
        except Exception as exc:  # no broker: the checkpoints still say something
            print(f"(no live replies: {type(exc).__name__}: {exc})", file=sys.stderr)
    try:
        print(list_models(s.artifacts, store, reported))
    finally:
        if store is not None and hasattr(store, "close"):
            store.close()
    return 0
