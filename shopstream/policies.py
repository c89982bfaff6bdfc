"""The policies the engine applies to its line-up, handed to it by `lineup.py`: when a
challenger replaces the champion (`PromotionPolicy`, see `lineup.py` for the whole rule)
and what a drifting champion gets (`CatalogReplacements`). Apart from the line-up's
building so that the engine can hold them without importing what builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from scipy import stats

from .config import check
from .models import CATALOG, RENAMED, build_model
from .slots import ModelSlot

MAX_SLOTS = 8


TESTS = ("auc", "log_loss", "auc_and_log_loss")


@dataclass(frozen=True)
class PromotionPolicy:
    """When a challenger replaces the champion automatically (see the module's docstring)."""

    test: str = "auc"              # auc: exact windowed ROC AUC (DeLong); log_loss; auc_and_log_loss: both
    alpha: float = 0.001           # one-sided false-promotion probability per check, split over the challengers
    margin: float = 0.0            # exact ROC AUC lead the challenger must also show on the window
    min_resolved: int = 1000       # paired resolved predictions before any decision
    min_positives: int = 30        # ... of which purchases (DeLong's variance needs some of each)
    window: int = 5000             # resolved predictions compared (the newest)
    check_every: int = 250         # resolved predictions between checks
    cooldown: int = 5000           # resolved predictions after a promotion before the next automatic one

    def __post_init__(self) -> None:
        check(self, (
            ("test", self.test in TESTS, f"must be one of {TESTS}"),
            ("alpha", 0 < self.alpha < 0.5, "must be in (0, 0.5): a one-sided false-promotion probability"),
            ("margin", 0 <= self.margin < 0.5, "must be in [0, 0.5): ROC AUC points"),
            ("window", self.window >= 10, "must be >= 10 resolved predictions"),
            ("min_resolved", 2 <= self.min_resolved <= self.window, "must be in [2, window]"),
            ("min_positives", self.min_positives >= 2, "must be >= 2"),
            ("check_every", self.check_every >= 1, "must be >= 1"),
            ("cooldown", self.cooldown >= 0, "must be >= 0 resolved predictions"),
        ))

    def z_critical(self, n_challengers: int) -> float:
        """One-sided critical z at `alpha` shared by `n_challengers` (Bonferroni)."""
        return float(stats.norm.isf(self.alpha / max(1, n_challengers)))

    def choose(self, comparisons) -> Optional[tuple[str, dict]]:
        """The challenger to promote, with the figures that decided it, or None.
        `comparisons`: (name, PairedLossTest) for every challenger."""
        comparisons = list(comparisons)
        critical = self.z_critical(len(comparisons))
        best = None
        for name, test in comparisons:
            if test.n < self.min_resolved or test.positives < self.min_positives:
                continue
            z_loss = test.z()
            if self.test == "auc_and_log_loss" and z_loss < critical:
                continue  # the cheap test first
            gain, z_auc = test.auc()
            z = {"auc": z_auc, "log_loss": z_loss}.get(self.test, min(z_auc, z_loss))
            if gain >= self.margin and z >= critical and (best is None or z > best[1]["z"]):
                best = (name, {"z": round(z, 2), "auc_gain": round(gain, 4), "z_auc": round(z_auc, 2),
                               "z_log_loss": round(z_loss, 2), "z_critical": round(critical, 2), "pairs": test.n})
        return best


@dataclass(frozen=True)
class CatalogReplacements:
    """The drift reaction's choice (``--drift-reaction challenger``): for a drifting champion
    that is a catalog model, a fresh one of the same kind, named ``<name>_since_drift<n>``,
    while fewer than `MAX_SLOTS` models run; else nothing. Kept in the engine's checkpoint.

    >>> CatalogReplacements()(ModelSlot("logreg", None), 2)[0], CatalogReplacements()(ModelSlot("mine", None), 2)
    ('logreg_since_drift0', None)
    """

    seed: int = 42

    def __call__(self, champion: ModelSlot, running: int) -> Optional[tuple[str, object]]:
        if running >= MAX_SLOTS or (champion.name not in CATALOG and champion.name not in RENAMED):
            return None
        return f"{champion.name}_since_drift{champion.drift_detections}", build_model(champion.name, self.seed)
