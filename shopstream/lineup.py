"""The line-up policy, in one place: which models run in a partition, when a challenger
replaces the champion, and what the drift reaction adds. The engine runs what it is
given (`engine.py`); the slots' mechanics are `slots.py`'s.

Which models: shared by the workers, the demo and the bootstrap so all start the same way
(`build_engine`; one fresh catalog model alone: `Engine.fresh`):

- champion: the bootstrap's DEFAULT artifact, else a fresh catalog model;
- challengers: by catalog name, each from its newest bootstrap artifact when there is
  one, else fresh;
- baseline: a second, frozen copy of the DEFAULT artifact (never learns).

Promotion (`PromotionPolicy`): a challenger replaces the champion when, on the same last
`window` resolved predictions (`slots.PairedLossTest` keeps each challenger's pairs), a
one-sided paired test says the challenger is better, at a level shared by all the
challengers (Bonferroni: `alpha` / number of challengers), checked every `check_every`
resolved predictions, after at least `min_resolved` pairs, and not within `cooldown`
resolved predictions of the last promotion. The test is on the *exact* ROC AUC of the
window (DeLong's paired z, not River's 10-threshold approximation, which at a 12% base
rate puts most scores in its first buckets), on log loss (paired z of the per-prediction
loss differences), or both; `benchmarks/promotion.py` measures how many labels each
needs and how often it promotes a challenger that is not better (QUALITY.md).

Drift (`CatalogReplacements`): with ``--drift-reaction challenger``, a champion whose
errors drift gets a fresh catalog model of its own kind as a new challenger, up to
`MAX_SLOTS` models.

The challenger name ``tuning`` stands for `TUNING`, the self-tuning line-up: logistic
regressions that differ only in their step (optimizer and step size). Each learns beside
the champion and the promotion test (`PromotionPolicy`) makes one champion
when it is better on this partition's own labels, so a partition finds the step its shop
needs without anyone choosing it (QUALITY.md measures it and its cost).

>>> expand_challengers(["tuning", "mlp", "logreg_adam"])
['logreg', 'logreg_slow', 'logreg_adagrad', 'logreg_adam', 'logreg_avg', 'mlp']
>>> import random
>>> from shopstream.slots import PairedLossTest
>>> rng = random.Random(1); test = PairedLossTest(window=2000)
>>> for _ in range(2000):
...     y = rng.random() < 0.2
...     truth = (1.0 if y else 0.0) + rng.gauss(0, 1)
...     test.update(y, truth + rng.gauss(0, 1.5), truth)   # champion, challenger (sharper)
>>> PromotionPolicy().choose([("sharp", test)])[0]
'sharp'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional


from . import model_state
from .artifacts import ArtifactError, latest, load_artifact
from .config import EngineConfig, check
from .engine import Engine
from .features import FeatureCaps, build_features
from .models import build_model
# The policies the engine applies live in policies.py (the engine holds them; this module builds engines).
from .policies import MAX_SLOTS, TESTS, CatalogReplacements, PromotionPolicy  # noqa: F401
from .signing import FROM_ENVIRONMENT, Key

#: The self-tuning line-up (challenger name ``tuning``): River's default step and four
#: ways to step more carefully. The decaying step (`logreg_decay`) is left out on purpose:
#: a step that only shrinks cannot follow a shop that changes months later.
TUNING = ("logreg", "logreg_slow", "logreg_adagrad", "logreg_adam", "logreg_avg")


def expand_challengers(names: Sequence[str]) -> list[str]:
    """Challenger names with ``tuning`` replaced by the `TUNING` line-up, each name once, in order."""
    expanded: list[str] = []
    for name in names:
        for item in (TUNING if name == "tuning" else (name,)):
            if item not in expanded:
                expanded.append(item)
    return expanded

log = logging.getLogger(__name__)

#: Drift reactions stop adding challengers once this many models run.
class ArtifactMismatch(ValueError):
    """The engine settings contradict those the artifact's model was trained under."""


@dataclass(frozen=True)
class Lineup:
    """Which models run in a new partition."""

    model: str = field(default="logreg", metadata={"help": "catalog model when no artifact is given"})
    challengers: tuple = field(default=(), metadata={
        "help": "catalog models to run beside the champion (from their newest artifact when there is one); "
                "'tuning' adds the self-tuning line-up of logistic regressions that differ in their step"})
    baseline: bool = field(default=True, metadata={
        "help": "run a frozen copy of the bootstrap model as the baseline"})
    seed: int = field(default=42, metadata={"help": "seed for catalog models"})
    mlp_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "Adam step of the mlp model in new partitions, per resolved label (default: 1e-3 for a fresh "
                "one, the bootstrap's --learning-rate for an artifact)", "type": float})
    promotion: Optional[PromotionPolicy] = None

    def __post_init__(self) -> None:
        rate = self.mlp_learning_rate
        check(self, (("mlp_learning_rate", rate is None or 0 < rate < 1, "must be in (0, 1)"),))


def build_engine(artifacts: Optional[str] = None, config: EngineConfig = EngineConfig(), lineup: Lineup = Lineup(),
                 caps: FeatureCaps = FeatureCaps(), adopt_artifact_settings: bool = False,
                 signing_key: Key = FROM_ENVIRONMENT) -> tuple[Engine, str]:
    """A new partition's engine and where its champion came from.

    With `artifacts`, the DEFAULT artifact's model and feature state start the partition,
    under the settings it was trained with: a `config` that contradicts them raises
    `ArtifactMismatch`, unless `adopt_artifact_settings` (then the artifact's are used, and logged).
    Artifacts are verified with `signing_key` (`shopstream.signing`)."""
    challengers = lineup.challengers
    seed = lineup.seed
    if artifacts:
        default = load_artifact(artifacts, signing_key)
        config = _settle(config, default, adopt_artifact_settings)
        if not all(hasattr(default.features, name) for name in ("set_caps", "transform", "learn")):
            raise ArtifactError(f"{default.path / 'model.pkl'}: holds {type(default.features).__name__} as its "
                                "feature state, not a feature set")
        default.features.set_caps(caps)
        # Unpickled, the feature state reads its attributes slowly; a shell of it does not (model_state.py)
        engine = Engine(default.model, model_state.fresh_shell(default.features), config,
                        model_name=default.meta["model"], model_version=default.meta["version"],
                        promotion=lineup.promotion, replacements=CatalogReplacements())
        origin = f"artifact:{default.meta['version']}"
        if lineup.baseline:
            frozen = load_artifact(default.path, signing_key)  # its own copy: the champion's will learn
            engine.add_slot(f"{default.meta['model']}_baseline", frozen.model, "baseline", frozen.meta["version"])
    else:
        engine = Engine(build_model(lineup.model, seed), build_features(config.features, caps), config,
                        model_name=lineup.model, promotion=lineup.promotion, replacements=CatalogReplacements())
        origin = "fresh"
    for name in expand_challengers(challengers):
        if name == engine.champion_slot.name:
            continue
        found = latest(artifacts, name) if artifacts else None
        if found is not None:
            artifact = load_artifact(found, signing_key)
            # as the DEFAULT's: a model trained under another feature set or window would learn from features
            # or labels it was not trained on (only the DEFAULT's settings can be adopted: they are the engine's)
            check_trained_under(artifact, config, f"retrain {name} under these, or leave it out of --challengers")
            engine.add_slot(name, artifact.model, "challenger", artifact.meta["version"])
        else:
            engine.add_slot(name, build_model(name, seed), "challenger", "fresh")
    if lineup.mlp_learning_rate is not None:
        from .mlp import MLPClassifier

        for slot in engine.slots:
            if isinstance(slot.model, MLPClassifier):
                slot.model.lr = lineup.mlp_learning_rate
                slot.keep_as_good()
    return engine, origin


def trained_under(artifact) -> EngineConfig:
    """The engine settings `artifact`'s model was trained under (ArtifactError naming its file if
    they cannot be used)."""
    try:
        return EngineConfig.of_artifact(artifact.meta)
    except (ValueError, TypeError) as exc:   # its own words, but not which file: said here
        raise ArtifactError(f"{artifact.path / 'meta.json'}: the engine settings it records cannot be used: "
                            f"{exc}") from None


def check_trained_under(artifact, config: EngineConfig, remedy: str) -> None:
    """ArtifactMismatch (saying what differs, then `remedy`) unless `artifact` was trained under
    `config`'s settings: the DEFAULT at a start, a challenger's artifact, a rollback's (its model
    would be handed features of another set, or labels of another window)."""
    differences = config.contradictions(trained_under(artifact))
    if differences:
        raise ArtifactMismatch(f"artifact {artifact.meta['version']} was trained under other settings: "
                               f"{', '.join(differences)}; {remedy}")


def _settle(config: EngineConfig, artifact, adopt: bool) -> EngineConfig:
    """The config to run an artifact under: the given one when it agrees with what the model
    was trained under; the artifact's when told to adopt it; else a clear refusal."""
    if not adopt:
        check_trained_under(artifact, config,
                            "run with the artifact's settings, or pass --adopt-artifact-settings to take them")
        return config
    trained = trained_under(artifact)
    differences = config.contradictions(trained)
    if not differences:
        return config
    log.warning("adopting the settings artifact %s was trained under: %s", artifact.meta["version"],
                ", ".join(differences))
    return config.adopting(trained)
