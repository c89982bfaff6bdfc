"""Model lifecycle commands for running workers, through a one-partition control topic.

`shopstream models promote NAME` / `rollback VERSION` append a command; every worker
reads the whole topic and applies each command, in order, to each partition engine it
owns whose `control_offset` is older. The offset is saved in the partition's
checkpoint, so a command reaches every partition exactly once: even one that was
on a stopped worker, or moves to another worker, when the command was sent.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import msgspec
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from shopstream.artifacts import ArtifactError, find_version, load_artifact
from shopstream.engine import Engine

from .connection import kafka_options
from .topics import create_topics

log = logging.getLogger("shopstream.control")


class Command(msgspec.Struct, forbid_unknown_fields=True):
    action: str                       # "promote" or "rollback"
    target: str                       # model name to promote, or artifact version to roll back to
    partition: Optional[int] = None   # None: every partition


def send_command(options: dict, topic: str, command: Command) -> int:
    """Append a command; return its offset. `options`: see `connection.kafka_options`."""
    create_topics(options, {topic: 1})
    producer = KafkaProducer(acks="all", **options)
    try:
        metadata = producer.send(topic, value=msgspec.json.encode(command)).get(timeout=30)
    finally:
        producer.close()
    return metadata.offset


class ControlChannel:
    """Reads the control topic from the beginning and remembers every command."""

    def __init__(self, options: dict, topic: str, artifacts: Optional[str]):
        create_topics(options, {topic: 1})
        self.artifacts = artifacts
        self.commands: list[tuple[int, Command]] = []
        self._consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                       **options)
        self._partition = TopicPartition(topic, 0)
        self._consumer.assign([self._partition])
        self.catch_up()

    def catch_up(self, timeout: float = 15.0) -> None:
        """Read every command sent so far, so partitions get them before their first event."""
        end = self._consumer.end_offsets([self._partition])[self._partition]
        deadline = time.monotonic() + timeout
        while self._consumer.position(self._partition) < end and time.monotonic() < deadline:
            self.poll(timeout_ms=200)

    def poll(self, timeout_ms: int = 0) -> bool:
        """Fetch new commands; True if there were any."""
        fresh = False
        for records in self._consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                try:
                    command = msgspec.json.decode(record.value, type=Command)
                except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
                    log.error("control message at offset %d ignored: %s", record.offset, exc)
                    continue
                self.commands.append((record.offset, command))
                fresh = True
        return fresh

    def apply(self, engine: Engine, partition: int) -> bool:
        """Apply, in order, every command this engine has not seen yet; True if any."""
        applied = False
        for offset, command in self.commands:
            if offset <= engine.control_offset:
                continue
            engine.control_offset = offset
            applied = True
            if command.partition is not None and command.partition != partition:
                continue
            try:
                if command.action == "promote":
                    engine.promote(command.target, reason="manual")
                elif command.action == "rollback":
                    if not self.artifacts:
                        raise ValueError("rollback needs the worker's --artifacts")
                    artifact = load_artifact(find_version(self.artifacts, command.target))
                    name, version = artifact.meta["model"], artifact.meta["version"]
                    if name != engine.model_name:
                        if name not in [slot.name for slot in engine.slots]:
                            engine.add_slot(name, artifact.model, "challenger", version)
                        engine.promote(name, reason=f"rollback to {version}")
                    engine.rollback(artifact.model, version)
                else:
                    raise ValueError(f"unknown action {command.action!r}")
            except (ValueError, ArtifactError) as exc:
                log.error("partition %d: control command %d (%s %s) not applied: %s",
                          partition, offset, command.action, command.target, exc)
        return applied

    def close(self) -> None:
        self._consumer.close()


def list_models(artifacts: Optional[str], checkpoints: Optional[str]) -> str:
    """A text table of artifact versions and of what each checkpointed partition runs."""
    import json
    from pathlib import Path

    from .checkpoints import DirectoryCheckpointStore

    lines = []
    if artifacts and Path(artifacts).is_dir():
        pointer = Path(artifacts) / "DEFAULT"
        default = pointer.read_text().strip() if pointer.is_file() else ""
        lines.append("artifact versions (rollback targets):")
        for meta_path in sorted(Path(artifacts).glob("*/*/meta.json")):
            meta = json.loads(meta_path.read_text())
            holdout = meta.get("metrics", {}).get("holdout", {})
            mark = " DEFAULT" if default.endswith(meta["version"]) else ""
            lines.append(f"  {meta['version']:<45} created {meta['created_at'][:19]}  "
                         f"holdout roc_auc {holdout.get('roc_auc', float('nan')):.4f}{mark}")
    if checkpoints and Path(checkpoints).is_dir():
        lines.append("partitions (from checkpoints):")
        for (topic, partition), state in sorted(DirectoryCheckpointStore(checkpoints).load_all().items()):
            for slot in state.engine.slots:
                rolling = slot.scores.rolling.values()
                lines.append(f"  {topic}[{partition}] {slot.role:<10} {slot.name:<24} {slot.version:<45} "
                             f"rolling roc_auc {rolling['roc_auc']:.4f}  resolved {len(slot.scores.cumulative)}"
                             f"  drifts {slot.drift_detections}")
            for entry in state.engine.history[-5:]:
                if entry["kind"] != "drift":
                    lines.append(f"    {entry}")
    return "\n".join(lines) or "nothing found (give --artifacts and/or --checkpoints)"


def models_command(args) -> int:
    if args.action == "list":
        print(list_models(args.artifacts, args.checkpoints))
        return 0
    if not args.target:
        raise ValueError(f"models {args.action} needs a target: a model name (promote) or an artifact version (rollback)")
    if args.action == "rollback" and args.artifacts:
        find_version(args.artifacts, args.target)  # fail here, not silently in every worker
    offset = send_command(kafka_options(args), args.control_topic,
                          Command(args.action, args.target, args.partition))
    scope = "every partition" if args.partition is None else f"partition {args.partition}"
    print(f"sent {args.action} {args.target} for {scope} (control offset {offset}); running workers apply it "
          "within a second, stopped ones when they resume")
    return 0
