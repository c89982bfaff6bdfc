"""Checkpoints of partitions: one concern per module.

- `format`: the CKPT-3 bytes (checked header, payload streamed while hashed, signing key
  taken explicitly);
- `migration`: which classes a payload may name and where the ones that moved live now
  (`MOVED`), by payload version;
- `stores`: the store interface (`CheckpointStore`) and the directory store;
- `kafka_store`: checkpoints in two compacted Kafka topics;
- `background`: checkpoints written by a forked child (`PendingSave`).

What a checkpoint holds is a `stream.partition.Partition`.
"""
