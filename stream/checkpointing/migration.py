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

The unpickler also refuses a class outside the packages a partition's state is made of
(`ALLOWED_PACKAGES`, and a few builtins): a defence in depth under the HMAC, which is
what proves a checkpoint was written by us.

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

import pickle
from typing import Any

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

#: The top-level packages a partition's state is made of.
ALLOWED_PACKAGES = frozenset({"shopstream", "stream", "river", "numpy", "collections", "array", "random",
                              "functools", "operator", "math", "datetime", "decimal", "fractions", "copyreg",
                              "_codecs", "itertools"})
#: Builtins a state may hold (never eval, exec, getattr, __import__ and the like).
ALLOWED_BUILTINS = frozenset({"bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple",
                              "dict", "set", "frozenset", "range", "slice", "object", "NotImplemented",
                              "Ellipsis"})


def resolve(module: str, name: str) -> tuple[str, str]:
    """Where the class a checkpoint calls `module.name` lives now."""
    for old, new in RENAMED_PACKAGES.items():
        if module == old or module.startswith(old + "."):
            module = new + module[len(old):]
            break
    return MOVED.get((module, name), (module, name))


class CheckpointUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's payload, finding moved classes where they live now."""

    def find_class(self, module: str, name: str) -> Any:
        module, name = resolve(module, name)
        package = module.partition(".")[0]
        allowed = name in ALLOWED_BUILTINS if module == "builtins" else package in ALLOWED_PACKAGES
        if not allowed:
            raise pickle.UnpicklingError(f"a checkpoint may not name {module}.{name}: not part of a partition's "
                                         "state (if it is now, add its package to ALLOWED_PACKAGES)")
        return super().find_class(module, name)
