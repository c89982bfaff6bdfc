"""The predict-then-learn engine that the bootstrap and the workers both drive.

For each event, in order:

1. drop it if its user's ``event_id`` was seen recently (a redelivered duplicate);
2. advance event time; predictions whose window closed resolve *negative*;
3. an event carrying ``label`` is predicted, scored and learned at once;
   a purchase resolves the open predictions of its (session, product) *positive*;
   a view or cart is predicted and the prediction is recorded, still unlabelled;
4. fold the event into the feature state (after predicting: no leakage).

Resolving a prediction scores the probability recorded when it was made, then
learns from the features recorded then. Every model slot (champion, challengers,
baseline: see `slots.py`) predicts and is scored on the same events; the champion's
prediction is the one returned. With the ``raw`` features and the ``logreg``
model, a labelled stream gives exactly river.evaluate's numbers.

The engine has one API, the line-up's: `slots`, `slot(name)`, `champion_slot`,
`add_slot`, `promote`, `rollback`, `freeze`, `record`. Which models run and what
replaces a drifting champion is decided by the line-up (`lineup.py`, `policies.py`) and handed in (`promotion`,
`replacements`); what makes a label is `labels.py`'s.

>>> from shopstream.events import Event
>>> engine = Engine.fresh("logreg", "raw")
>>> engine.process(Event(1.6e9, "view", "p", "u", "s", features={"a": 1.0}, label=True))
0.5
>>> engine.counts["learned"], len(engine.champion_slot.scores.cumulative)
(1, 1)
"""

from __future__ import annotations

import copy
import logging
import math
from bisect import bisect_left
from dataclasses import replace
from typing import Any, Callable, Optional, cast

from river.drift import ADWIN

from .config import EngineConfig
from .delayed import FakeNegativeWeighted
from .events import Event
from .labels import (LABELLED, PREDICTION_POINT, PURCHASE, LabelJoiner, OpenPrediction, PackedLayout, label_role,
                     prediction_key)
from .features import build_features
from . import model_state
from .models import build_model
from .policies import CatalogReplacements, PromotionPolicy
from .recent_ids import RecentIds
from .slots import ModelSlot, PairedLossTest, model_is_finite


#: The drift reaction's choice of a replacement for a drifting champion (`policies.CatalogReplacements`):
#: (the champion's slot, how many slots run) -> (name, fresh model) of a new challenger, or None.
Replacements = Callable[[ModelSlot, int], Optional[tuple]]

log = logging.getLogger(__name__)

#: Upper bounds (seconds of event time) of the label-delay histogram buckets.
LABEL_DELAY_BUCKETS = (0.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
COUNT_NAMES = ("consumed", "duplicate", "predicted", "unscored", "resolved", "learned", "learn_errors",
               "promotions")
MAX_HISTORY = 200
#: Garbage-collector thresholds for a process that runs engines (the worker, the bootstrap): every
#: prediction allocates a feature dict, and full collections walk the whole feature state, so young
#: objects are collected every 50,000 allocations, not 700 (BENCHMARKS.md measured up to +21% with gc off).
#: A young collection stops every Python thread about 0.4-0.6 us per young object (p50 about 20 ms in a
#: live worker whose windows are filling); every 5,000 allocations halved the scoring API's what-if p99 but cost the
#: kafka-python worker about a quarter of its throughput (BENCHMARKS.md, "The API on librdkafka", 10).
GC_THRESHOLDS = (50_000, 50, 100)


_isfinite = math.isfinite
_UNSCORED = (0.0, None)   # a slot that could not predict (River's empty predict_proba_one)


def _argmax(proba: dict):
    """River's predict_one: the argmax of predict_proba_one, ties to the first key (`max`'s
    rule), without `max`'s key calls for the usual two classes."""
    if len(proba) == 2:
        first, second = proba
        return second if proba[second] > proba[first] else first
    return max(proba, key=proba.__getitem__)


class Engine:
    """Predict-then-learn state over one ordered stream (one partition)."""

    #: Shared learning (`shopstream/shared_learning.py`): when set, a resolved example is handed to
    #: it instead of being learned here; the learn log teaches every partition's models.
    learn_sink = None

    #: What the drift reaction ``challenger`` adds (None: nothing; engines from older checkpoints).
    replacements: Optional[Replacements] = None

    #: Set by `mark_good`: the checkpoint that follows pickles every slot's model, which slows
    #: its attribute loads on CPython 3.11-3.12 (`model_state.py`); the next event refreshes them.
    _refresh_due = False

    #: Whether `process` keeps the dedupe window (`config.dedupe` recent event ids; a repeat is dropped).
    #: The bootstrap turns it off: its history was de-duplicated by event id, all of it, as it loaded.
    deduplicates = True

    def __init__(self, model, features, config: EngineConfig = EngineConfig(), *, model_name: str = "model",
                 model_version: str = "fresh", promotion: Optional[PromotionPolicy] = None,
                 replacements: Optional[Replacements] = None):
        """An engine whose line-up starts with `model` as its champion; `add_slot` adds the others."""
        self.config = config
        self.features = features
        self.slots = [ModelSlot(model_name, model, "champion", model_version, True, config.metric_window,
                                config.drift_delta, getattr(features, "share_names", None))]
        self.champion = 0  # index into slots; slots are only ever appended
        self.joiner = LabelJoiner(window=config.window, lateness=config.lateness, max_open=config.max_open,
                                  max_jump=config.max_time_jump)
        self.counts = dict.fromkeys(COUNT_NAMES, 0)
        # Counts per label-delay bucket, the last one is +Inf.
        self.label_delay_counts = [0] * (len(LABEL_DELAY_BUCKETS) + 1)
        self.label_delay_sum = 0.0
        self.promotion = promotion
        self.replacements = replacements
        self.history: list[dict] = []   # lineage: promotions, rollbacks, drift detections, control commands
        self.control_offset = -1        # last control command applied (see stream/control_worker.py)
        self._recent_ids = RecentIds()  # the dedupe window (recent_ids.py)

    @classmethod
    def fresh(cls, model_name: str, feature_set: str = EngineConfig.features, seed: int = 42,
              config: Optional[EngineConfig] = None, **settings) -> "Engine":
        """One untrained catalog model as the champion, empty feature state, nothing else;
        `settings` override fields of `config` (e.g. ``window=600``)."""
        config = replace(config or EngineConfig(), features=feature_set, **settings)
        return cls(build_model(model_name, seed), build_features(config.features), config, model_name=model_name,
                   replacements=CatalogReplacements())

    def __setstate__(self, state: dict) -> None:
        model_state.restore_attributes(self, state)
        self._refresh_due = True   # what pickle restored reads its attributes slowly (see `_refresh`)
        if "replacements" not in state:  # a checkpoint from before the line-up chose them: the catalog's
            self.replacements = CatalogReplacements()
        if type(self._recent_ids) is not RecentIds:  # a checkpoint from before it was packed: an OrderedDict
            self._recent_ids = RecentIds(self._recent_ids.items())
        # The restored models hold the checkpoint's own strings: their copies take the names' objects
        # the events bring (`model_state.keep`; River ran 16% slower per raw event without, BENCHMARKS.md).
        if self._share_names_with_slots():
            for slot in self.slots:
                slot.keep_as_good()

    def _share_names_with_slots(self) -> bool:
        """Give every slot the feature set's `share_names` (see `ModelSlot`); False if it has none."""
        share_names = getattr(self.features, "share_names", None)
        for slot in self.slots:
            slot.share_names = share_names
        return share_names is not None

    @property
    def champion_slot(self) -> ModelSlot:
        """The slot whose predictions are published (and returned by `process`)."""
        return self.slots[self.champion]

    @property
    def open_predictions(self) -> int:
        return len(self.joiner)

    def state_size(self) -> int:
        """Entries of state whose number a checkpoint's pickling time follows: open predictions,
        recent event ids and the features' entries (a feature set without `size` counts none)."""
        size = getattr(self.features, "size", None)
        return len(self.joiner) + len(self._recent_ids) + (size() if size is not None else 0)

    def mark_good(self) -> None:
        """Before a checkpoint: every slot's model must be finite. A model that is not goes
        back to its last good state (counted in its resets), and the finite ones become the
        new last good states, so a NaN model is never checkpointed."""
        for slot in self.slots:
            if model_is_finite(slot.model):
                slot.keep_as_good()
            else:
                log.error("%s has non-finite weights: back to its last good state", slot.name)
                slot.reset("non_finite_weights")
        self._refresh_due = True

    def _refresh(self) -> None:
        """After a checkpoint pickled the engine (or a restore unpickled it), its objects' attribute
        loads are slow on CPython 3.11-3.12 (`model_state.py`): each slot runs an identical copy of its
        model and scores, and the joiner, the features and the settings they read per event are
        swapped for shells holding the same state (the engine is their one holder; others look
        them up through it). The engine itself is swapped by its holder, the partition
        (`stream.checkpointer`). In process, shop features: 16% slower per event after a checkpoint
        and 8% after a restore before this, 2-5% after (benchmarks/after_checkpoint.py; BENCHMARKS.md)."""
        self._refresh_due = False
        for slot in self.slots:
            slot.refresh()
        self.slots = [model_state.fresh_shell(slot) for slot in self.slots]
        self.joiner = model_state.fresh_shell(self.joiner)
        self.config = model_state.fresh_shell(self.config)
        self.promotion = model_state.fresh_shell(self.promotion)   # read per resolution with challengers
        if self.learn_sink is not None:   # shared learning's outbox: called per resolution
            self.learn_sink = model_state.fresh_shell(self.learn_sink)
        features = model_state.fresh_shell(self.features)
        if getattr(features, "caps", None) is not None:
            features.caps = model_state.fresh_shell(features.caps)
        self.features = features
        self._share_names_with_slots()   # (the shell's, not the object it replaced)

    # -- slots ------------------------------------------------------------------------

    def add_slot(self, name: str, model, role: str = "challenger", version: str = "fresh") -> ModelSlot:
        if any(slot.name == name for slot in self.slots):
            raise ValueError(f"a model named {name!r} already runs here")
        slot = ModelSlot(name, model, role, version, metric_window=self.config.metric_window,
                         drift_delta=self.config.drift_delta, share_names=getattr(self.features, "share_names", None))
        if role == "challenger":
            slot.comparison = PairedLossTest(self.promotion.window if self.promotion else 2000)
        self.slots.append(slot)
        return slot

    def slot(self, name: str) -> ModelSlot:
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise ValueError(f"no model named {name!r} here; running: {[s.name for s in self.slots]}")

    def promote(self, name: str, reason: str = "manual", **details) -> None:
        """Make challenger `name` the champion; the old champion becomes a challenger."""
        new = self.slot(name)
        if new.role == "baseline":
            raise ValueError(f"{name!r} is the frozen baseline: it cannot be promoted")
        old = self.slots[self.champion]
        if new is old:
            return
        old.role, new.role = "challenger", "champion"
        self.champion = self.slots.index(new)
        for slot in self.slots:  # comparisons were against the old champion
            slot.comparison = PairedLossTest(self.promotion.window if self.promotion else 2000) \
                if slot.role == "challenger" else None
        self.counts["promotions"] += 1
        self.last_promotion_resolved = self.counts["resolved"]  # the cooldown counts from here
        self.record("promotion", reason=reason, old=old.name, new=new.name, **details)
        log.info("promoted %s over %s (%s)", new.name, old.name, reason)

    def rollback(self, model, version: str, reason: str = "manual") -> None:
        """Replace the champion's model by an earlier version (e.g. a bootstrap artifact)."""
        champion = self.slots[self.champion]
        previous = champion.version
        champion.model, champion.version = model, version
        champion.keep_as_good()
        champion.drift = type(champion.drift)(delta=champion.drift.delta)
        self.record("rollback", reason=reason, model=champion.name, old=previous, new=version)
        log.info("rolled %s back from %s to %s", champion.name, previous, version)

    def freeze(self) -> None:
        """No slot learns from now on: a copy that only predicts (the bootstrap's holdout)."""
        for slot in self.slots:
            slot.learn = False

    def record(self, kind: str, **details) -> None:
        """Add an entry to the lineage (`history`, the newest `MAX_HISTORY`): what happened, at
        which event time and after how many resolved predictions (e.g. a control command)."""
        self.history.append({"kind": kind, "event_time": self.joiner.max_time,
                             "resolved": self.counts["resolved"], **details})
        del self.history[:-MAX_HISTORY]

    # -- the event path -----------------------------------------------------------------

    def process(self, event: Event, ref: object = None, served: Optional[tuple] = None) -> Optional[float]:
        """Handle one validated event; return the champion's P(purchase) if it was predicted.

        `ref` is kept with the open prediction (e.g. the Kafka offset) for tracing. `served`: what
        `serve` gave for this view or cart when the scoring API answered it, (features, outputs,
        champion index): recorded as its prediction instead of predicting again, so the score served,
        published and scored is one number and the models learn from the features it was served on.
        A `served` that does not fit this engine raises ValueError, and nothing changes."""
        if served is not None:
            self._check_served(event, served)
        if self._refresh_due:  # the first event after a checkpoint or a restore (see `_refresh`)
            self._refresh()
        counts = self.counts
        counts["consumed"] += 1
        event_id = event.event_id if self.deduplicates else None
        if event_id is not None:
            # keyed by the user too: a client's id (a scoring request) must not match another user's event
            key = (event.user_id, event_id)
            recent = self._recent_ids
            if key in recent or (recent.bare and event_id in recent):   # bare: ids of an old checkpoint
                counts["duplicate"] += 1
                return None

        t: float = event.event_time  # type: ignore[assignment]  # validated: epoch seconds
        joiner = self.joiner
        for expired in joiner.advance(t, event.user_id):
            self._resolve(expired, False, t)

        p_true = None
        role = label_role(event)  # what the label rule makes of it (labels.py)
        if role == LABELLED:
            prediction = self._predict(event, ref)
            p_true = prediction.p_true
            self._resolve(prediction, event.label, t)  # type: ignore[arg-type]  # LABELLED: a bool
        elif role == PURCHASE:
            for bought in joiner.purchase(prediction_key(event), t):
                self._resolve(bought, True, t)
        elif role == PREDICTION_POINT:
            prediction = self._predict(event, ref) if served is None else self._open_served(event, ref, served)
            if joiner.open(prediction, getattr(self.features, "floats_only", False)):
                p_true = prediction.p_true
        self.features.learn(event)
        if event_id is not None:  # only once handled: an event that failed may be sent again
            # p_true: what a repeated request for this event is answered (`recorded`)
            self._recent_ids.add(key, p_true, self.config.dedupe)
        return p_true

    def recorded(self, event_id: str, user_id: str) -> tuple[bool, Optional[float]]:
        """(seen, the champion's recorded P(purchase) or None) for user `user_id`'s event
        `event_id` among the last `config.dedupe` handled: a scoring request repeated after its
        event went through. Another user's event of that id is not this one."""
        recent = self._recent_ids
        key = (user_id, event_id)
        if key in recent:
            return True, recent[key]
        if recent.bare and event_id in recent:   # from a checkpoint written before the window kept users
            return True, recent[event_id]
        return False, None

    def what_if(self, event: Event) -> list[tuple[str, str, str, Optional[float]]]:
        """(model, role, version, P(purchase) or None) of every slot for `event` on the live
        feature state, changing nothing: no prediction recorded, no feature state folded in,
        no model reset (a non-finite score is None): `serve`'s outputs, named."""
        _, outputs, _ = self.serve(event)
        return [(slot.name, slot.role, slot.version, p_true if y_pred is not None else None)
                for slot, (p_true, y_pred) in zip(self.slots, outputs)]

    def serve(self, event: Event) -> tuple[dict, tuple, int]:
        """What `process` would record for the view or cart `event` now, changing nothing: (its
        features, each slot's (P(True), predicted label), the champion's index). A slot whose
        P(True) is not finite is unscored here ((0.0, None), as a model that cannot predict yet):
        a score must not reset a model. The scoring API answers with it and writes it beside the
        event; `process(event, served=...)` then records exactly this prediction.

        >>> from shopstream.events import Event
        >>> engine = Engine.fresh("logreg", "raw")
        >>> view = Event(1.6e9, "view", "p", "u", "s", features={"a": 1.0})
        >>> served = engine.serve(view)
        >>> served, engine.counts["predicted"]
        (({}, ((0.5, False),), 0), 0)
        >>> engine.process(view, served=served), engine.counts["predicted"]
        (0.5, 1)
        """
        x = getattr(self.features, "peek", self.features.transform)(event)
        outputs = []
        for slot in self.slots:   # `_predict`'s outputs, without its reset of a poisoned model
            proba = slot.model.predict_proba_one(x)
            p_true = proba.get(True, 0.0) if proba else math.nan
            outputs.append((p_true, _argmax(proba)) if _isfinite(p_true) else _UNSCORED)
        return x, tuple(outputs), self.champion

    def _check_served(self, event: Event, served: tuple) -> None:
        x, outputs, champion = served
        if label_role(event) != PREDICTION_POINT:
            raise ValueError(f"a served prediction on a {event.event_type} event"
                             f"{' with a label' if event.label is not None else ''}: only views and carts are served")
        if not 0 < len(outputs) <= len(self.slots):
            raise ValueError(f"{len(outputs)} served model outputs: {len(self.slots)} models run on this partition")
        if not 0 <= champion < len(outputs):
            raise ValueError(f"served champion {champion}: not one of the {len(outputs)} served outputs")
        unfit = self.features.unfit(x)
        if unfit is not None:
            raise ValueError(f"served features do not fit the {self.features.name} features: {unfit}")

    def _open_served(self, event: Event, ref: object, served: tuple) -> OpenPrediction:
        """The prediction `serve` gave (checked by `_check_served`), recorded as `_predict` records its own;
        slots added since it was served skip it, as they skip predictions made before them."""
        x, outputs, champion = served
        for slot in self.slots[:len(outputs)]:
            if slot.provisional:   # as in `_predict`: each delayed-feedback model learns it at once
                self._learn_provisional(slot, x)
        self.counts["predicted"] += 1
        t: float = event.event_time  # type: ignore[assignment]  # validated: epoch seconds
        return OpenPrediction(prediction_key(event), t, x, list(outputs), champion, ref)

    def _predict(self, event: Event, ref: object) -> OpenPrediction:
        x = self.features.transform(event)
        outputs = []
        for slot in self.slots:
            proba = slot.model.predict_proba_one(x)
            output = _UNSCORED
            if proba:
                p_true = proba.get(True, 0.0)
                if _isfinite(p_true):
                    if len(proba) == 2:   # _argmax, inline for the usual two classes
                        first, second = proba
                        output = (p_true, second if proba[second] > proba[first] else first)
                    else:
                        output = (p_true, _argmax(proba))
                else:  # a poisoned model: back to its last good state
                    slot.reset("non_finite_prediction")
                    proba = slot.model.predict_proba_one(x)
                    p_true = proba.get(True, 0.0) if proba else math.nan
                    if _isfinite(p_true):
                        output = (p_true, _argmax(proba))
            outputs.append(output)
            # Provisional negatives learned as each slot predicts: each model sees only its own calls.
            if slot.provisional:   # it learns and is a FakeNegativeWeighted (slots.py)
                self._learn_provisional(slot, x)
        self.counts["predicted"] += 1
        t: float = event.event_time  # type: ignore[assignment]  # validated: epoch seconds
        return OpenPrediction(prediction_key(event), t, x, outputs, self.champion, ref)

    def _resolve(self, prediction: OpenPrediction, y_true: bool, now: float) -> None:
        counts = self.counts
        counts["resolved"] += 1
        delay = now - prediction.event_time
        self.label_delay_counts[0 if delay <= 0.0 else bisect_left(LABEL_DELAY_BUCKETS, delay)] += 1
        self.label_delay_sum += delay
        # prediction.x and .outputs, read at once (one unpack when packed, no property calls)
        x: Any = prediction._x
        outputs: Any = prediction._outputs
        if outputs.__class__ is PackedLayout:
            x, outputs = outputs.unpack(x)
        slots = self.slots
        if outputs[prediction.champion][1] is None:
            counts["unscored"] += 1  # river.evaluate skips empty predictions too
        predicted_by = slots if len(slots) == len(outputs) else slots[:len(outputs)]  # later slots skip it
        compared = False
        if len(slots) > 1:   # each challenger is compared with the champion of now, if both predicted
            champion = self.champion
            p_champion, champion_pred = outputs[champion] if champion < len(outputs) else _UNSCORED
            compared = champion_pred is not None
        for slot, (p_true, y_pred) in zip(predicted_by, outputs):
            if y_pred is not None:
                slot.scores.update(y_true, p_true, y_pred)
                error = 0.0 if y_pred == y_true else 1.0
                drift = slot.drift
                if drift.__class__ is ADWIN:  # ADWIN.update's two lines, without its method and property calls
                    if drift._drift_detected:
                        drift._reset()
                    detected = drift._drift_detected = drift._helper.update(error)
                else:
                    drift.update(error)
                    detected = drift.drift_detected
                if compared and slot.comparison is not None:   # (a drift reaction below never replaces one)
                    slot.comparison.update(y_true, p_champion, p_true)
                if detected:
                    self._on_drift(slot)
        sink = self.learn_sink
        if sink is not None:
            sink(x, y_true, prediction, now)  # shared learning: learned when the learn log brings it back
        else:
            self.learn_example(x, y_true, predicted_by, prediction.event_time)  # x: a dict
        if len(slots) > 1:   # (a drift reaction above may have added one)
            policy = self.promotion
            if policy is not None and counts["resolved"] % policy.check_every == 0:
                champion = self.champion
                if champion < len(outputs) and outputs[champion][1] is not None:   # it predicted this one
                    self._maybe_promote(policy)
        # learned: the features are no longer needed (`prediction.x = None`: the outputs stay, unpacked)
        prediction._outputs = outputs
        prediction._x = None

    def learn_example(self, x: dict, y_true: bool, slots: Optional[list] = None,
                      made_at: Optional[float] = None) -> None:
        """Every slot that learns (all but a frozen baseline; `slots`: those of them that
        predicted it) learns one labelled example: a resolved prediction (made at event time
        `made_at`), or one from the learn log (shared learning). A failure is counted and
        logged, never raised: the example is resolved by a later event, which must not fail
        with it, nor lose the other predictions resolved with it."""
        counts = self.counts
        champion = self.slots[self.champion]
        champion_failed = False
        for slot in self.slots if slots is None else slots:
            if slot.learn:
                try:
                    slot.model.learn_one(x, y_true)
                except Exception as exc:
                    counts["learn_errors"] += 1
                    champion_failed = champion_failed or slot is champion
                    n = counts["learn_errors"]
                    if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood of them cannot flood the log
                        what = f"a prediction made at {made_at:.0f}" if made_at is not None else "a learn log example"
                        log.warning("%s could not learn %s (%d so far): %s: %s", slot.name, what, n,
                                    type(exc).__name__, exc)
        if champion.learn and not champion_failed:
            counts["learned"] += 1

    def _learn_provisional(self, slot: ModelSlot, x: dict) -> None:
        """Delayed-feedback models (`delayed.py`) learn each new prediction at once as a
        provisional negative; their `learn_one` at resolution then only corrects purchases."""
        try:
            cast(FakeNegativeWeighted, slot.model).learn_provisional(x)
        except Exception as exc:  # counted and logged like a failed learn: never fails the event
            self.counts["learn_errors"] += 1
            log.warning("%s could not learn a provisional negative: %s: %s", slot.name,
                        type(exc).__name__, exc)

    # -- lifecycle: comparison, promotion, drift ----------------------------------------------

    def _maybe_promote(self, policy: PromotionPolicy) -> None:
        last = getattr(self, "last_promotion_resolved", None)  # absent in checkpoints from before cooldowns
        if last is not None and self.counts["resolved"] - last < policy.cooldown:
            return
        chosen = policy.choose((slot.name, slot.comparison) for slot in self.slots if slot.comparison is not None)
        if chosen is not None:
            name, details = chosen
            self.promote(name, reason="automatic", **details)

    def _on_drift(self, slot: ModelSlot) -> None:
        slot.drift_detections += 1
        self.record("drift", model=slot.name, role=slot.role)
        log.info("drift detected in the errors of %s (%s) at event time %.0f after %d resolved",
                 slot.name, slot.role, self.joiner.max_time, self.counts["resolved"])
        reaction = self.config.drift_reaction
        if slot.role != "champion" or reaction == "none":
            return
        if reaction == "reset":
            baseline = next((s for s in self.slots if s.role == "baseline"), None)
            if baseline is not None:
                self.rollback(copy.deepcopy(baseline.model), baseline.version, reason="drift")
        elif reaction == "challenger" and self.replacements is not None:
            chosen = self.replacements(slot, len(self.slots))  # the line-up's choice (policies.py)
            if chosen is not None:
                name, model = chosen
                self.add_slot(name, model, "challenger", "fresh")
