"""Benchmark-local monkeypatches that price a proposed package change before it is made.

`ordered_fifo()`: the engine's dedupe memory (`Engine._recent_ids`) and the feature
state's capped dicts (`shopstream.features._Capped`) forget their oldest key with
`del d[next(iter(d))]`. On a plain dict that is O(number of keys deleted so far) once the
cap is reached: CPython leaves deleted slots at the front of the entry table and
`next(iter(d))` walks over all of them until the next resize. An OrderedDict (a linked
list) makes it O(1) with the same semantics, order and pickling.
"""

from __future__ import annotations

from collections import OrderedDict


def ordered_fifo() -> None:
    import shopstream.engine as engine_module
    import shopstream.features as features_module

    class CappedOrdered(OrderedDict):
        def __init__(self, cap: int):
            super().__init__()
            self.cap = cap

        def __reduce__(self):
            return (self.__class__, (self.cap,), None, None, iter(self.items()))

        def slot(self, key, make):
            value = self.get(key)
            if value is None:
                value = self[key] = make()
                if len(self) > self.cap:
                    self.popitem(last=False)
            return value

    CappedOrdered.__name__ = CappedOrdered.__qualname__ = "_Capped"
    CappedOrdered.__module__ = features_module.__name__
    features_module._Capped = CappedOrdered

    original_init = engine_module.Engine.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._recent_ids = OrderedDict()

    engine_module.Engine.__init__ = init
