"""Where the classes a checkpoint names live now, and which classes it may name at all.

A checkpoint's payload is a pickle: it names each class by module and name. Moving or
renaming a class would make every checkpoint written before unreadable, so a checkpoint
is read through `CheckpointUnpickler`, whose `find_class` looks each name up here first:

- `MOVED`: one entry per class that moved, (old module, old name) -> (new module, new name);
- `RENAMED_PACKAGES`: whole packages that moved (before commit d388c41 the stages were
  `shopstream.stream.*` and `shopstream.offline.*`).

Moving a class means adding its old place to `MOVED` (tests/test_state_checkpoints.py
shows a move being read). Anything else that changes what a payload means raises
`PAYLOAD_VERSION`, written in each checkpoint's header, and says here how an older one is read.

The unpickler also refuses anything a partition's state is not made of (`allowed`): exactly the
(module, name) pairs of `STATE_NAMES`, the names a model and its feature state are made of
(`shopstream.artifacts.MODEL_NAMES`, which artifacts are read with) and the engine's and the
partition's own; never a whole package (numpy alone holds `numpy.memmap`, which writes any file),
never an ndarray subclass, never a dotted name: a defence in depth under the HMAC, which is what
proves a checkpoint was written by us, and all there is without a signing key.

>>> resolve("shopstream.stream.checkpoints", "PartitionState")
('stream.partition', 'Partition')
>>> resolve("shopstream.lineup", "CatalogReplacements")   # moved to policies.py on 2026-12-03
('shopstream.policies', 'CatalogReplacements')
>>> resolve("shopstream.offline.bootstrap", "Anything")
('offline.bootstrap', 'Anything')
>>> resolve("river.linear_model.log_reg", "LogisticRegression")
('river.linear_model.log_reg', 'LogisticRegression')
"""

from __future__ import annotations

from typing import Any

from shopstream.artifacts import MODEL_NAMES, RestrictedUnpickler, name_table, refused

#: What a payload means, by version:
#:   1. a pickle of `shopstream.stream.checkpoints.PartitionState` (or `stream.checkpoints.PartitionState`),
#:      then its open predictions in batches, then None; headers without a "payload" field are this;
#:   2. the same stream of pickles, of `stream.partition.Partition` (its runtime-only fields left out);
#:   3. the same, and a batch of open predictions may be a `shopstream.open_columns.OpenColumns` (format.py).
PAYLOAD_VERSION = 3

#: Packages that moved as a whole: old prefix -> new prefix.
RENAMED_PACKAGES = {
    "shopstream.stream": "stream",
    "shopstream.offline": "offline",
    "shopstream.cli": "cli",
}

#: Classes that moved (after `RENAMED_PACKAGES` is applied): (module, name) -> (module, name).
MOVED = {
    ("stream.checkpoints", "PartitionState"): ("stream.partition", "Partition"),
    ("shopstream.lineup", "CatalogReplacements"): ("shopstream.policies", "CatalogReplacements"),
}

#: What a checkpoint may name: what an artifact may (a model, its feature state), and the rest of
#: a partition's state (found the same way: see `MODEL_NAMES`). Names are checked after `resolve`,
#: so an old checkpoint's class is admitted where it lives now. A class of ours that opens files or
#: sockets when built (the stores, the metrics server) is never part of a state.
STATE_NAMES = {**MODEL_NAMES, **{module: MODEL_NAMES.get(module, frozenset()) | names for module, names in name_table(
    "river.metrics.log_loss LogLoss",
    "shopstream.config EngineConfig",
    "shopstream.engine Engine",
    "shopstream.labels LabelJoiner OpenPrediction PackedLayout",
    "shopstream.open_columns OpenColumns",
    "shopstream.policies CatalogReplacements PromotionPolicy",
    "shopstream.recent_ids RecentIds _unpack",
    "shopstream.scoring BinaryScores Scoreboard ThresholdROCAUC",
    "shopstream.events Event",   # a learn outbox's events not yet published (shared learning)
    "shopstream.shared_learning CatalogEvents Example LearnOutbox LogReplica",
    "shopstream.slots ModelSlot PairedLossTest",
    "stream.partition Partition",
).items()}}


def resolve(module: str, name: str) -> tuple[str, str]:
    """Where the class a checkpoint calls `module.name` lives now."""
    for old, new in RENAMED_PACKAGES.items():
        if module == old or module.startswith(old + "."):
            module = new + module[len(old):]
            break
    return MOVED.get((module, name), (module, name))


def allowed(module: str, name: str, found: Any = None) -> bool:
    """Whether a checkpoint may name `module.name` (as `resolve` gives it); `found`: what it is,
    once imported (an ndarray subclass is refused, whatever the list says).

    >>> allowed("river.preprocessing.scale", "StandardScaler"), allowed("shopstream.files", "os.system")
    (True, False)
    >>> import os; allowed("shopstream.files", "os", os), allowed("operator", "attrgetter")
    (False, False)
    >>> allowed("numpy", "memmap"), allowed("builtins", "bytearray")
    (False, False)
    """
    return name in STATE_NAMES.get(module, ()) and refused(module, name, found) is None


class CheckpointUnpickler(RestrictedUnpickler):
    """Unpickles a checkpoint's payload, finding moved classes where they live now."""

    names = STATE_NAMES
    what = "a checkpoint"
    unlisted = ("not part of a partition's state (if it is now, add it to STATE_NAMES, or to MODEL_NAMES "
                "if a model or its feature state holds it)")

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(*resolve(module, name))
