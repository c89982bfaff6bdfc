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

The unpickler also refuses anything a partition's state is not made of (`allowed`): the
classes of its packages (`ALLOWED_PACKAGES`), the few functions their pickles call
(`ALLOWED_FUNCTIONS`), named classes of a few standard modules and builtins, never a dotted
name: a defence in depth under the HMAC, which is what proves a checkpoint was written by us.

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

#: The packages a partition's state is made of: their classes, and the functions below (of the
#: stages' own package, `stream`, only the partition: its other classes open files and sockets).
ALLOWED_PACKAGES = frozenset({"shopstream", "river", "numpy"})
#: Modules of those packages whose classes hold no state and do things when built (a metrics
#: server binds its port).
NO_STATE_HERE = frozenset({"shopstream.exporter", "shopstream.files"})
#: Functions of those packages a pickle of a state calls to rebuild an object (every other
#: function there is refused: one that writes a file would be a tool, not data).
ALLOWED_FUNCTIONS = frozenset({
    ("shopstream.recent_ids", "_unpack"),
    # numpy's arrays, scalars and random generators (numpy.core before numpy 2, numpy._core after)
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__bit_generator_ctor"), ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
})
#: Outside those packages, exactly these names of each module (never `operator`'s getters and
#: the like: chained through REDUCE they reach any object, `os.system` included).
ALLOWED_NAMES = {
    "stream.partition": frozenset({"Partition"}),
    "array": frozenset({"array", "_array_reconstructor"}),
    "collections": frozenset({"Counter", "OrderedDict", "defaultdict", "deque"}),
    "functools": frozenset({"partial"}),   # River's trees: defaultdict(partial(...))
    "random": frozenset({"Random"}),
    "copyreg": frozenset({"_reconstructor", "__newobj__", "__newobj_ex__"}),   # older pickle protocols
    "_codecs": frozenset({"encode"}),   # bytes, in pickle protocols before 3
    "datetime": frozenset({"date", "datetime", "time", "timedelta", "timezone"}),
    "decimal": frozenset({"Decimal"}),
    "fractions": frozenset({"Fraction"}),
}
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


def allowed(module: str, name: str, found: Any = None) -> bool:
    """Whether a checkpoint may name `module.name`; `found`: what it is, once imported (a class
    or an allowed function defined in that very module, not one imported there from elsewhere).

    >>> allowed("river.preprocessing.scale", "StandardScaler"), allowed("shopstream.files", "os.system")
    (True, False)
    >>> import os; allowed("shopstream.files", "os", os), allowed("operator", "attrgetter")
    (False, False)
    """
    if "." in name:   # a dotted name walks attributes: from any module that imports os, to os.system
        return False
    if module == "builtins":
        return name in ALLOWED_BUILTINS
    if module in ALLOWED_NAMES:
        return name in ALLOWED_NAMES[module]
    if module.partition(".")[0] not in ALLOWED_PACKAGES or module in NO_STATE_HERE:
        return False
    if found is None:
        return True   # (checked again once imported)
    if not (isinstance(found, type) or (module, name) in ALLOWED_FUNCTIONS):
        return False
    home = getattr(found, "__module__", None)
    return isinstance(home, str) and home.partition(".")[0] == module.partition(".")[0]


class CheckpointUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's payload, finding moved classes where they live now."""

    def find_class(self, module: str, name: str) -> Any:
        module, name = resolve(module, name)
        if allowed(module, name):   # (refused before its module is even imported)
            found = super().find_class(module, name)
            if allowed(module, name, found):
                return found
        raise pickle.UnpicklingError(f"a checkpoint may not name {module}.{name}: not part of a partition's "
                                     "state (if it is now, add it to ALLOWED_NAMES or ALLOWED_FUNCTIONS)")
