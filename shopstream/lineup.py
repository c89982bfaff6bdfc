"""The line-up of models for one partition: champion, challengers, frozen baseline.

Shared by the workers and the demo so both start partitions the same way:

- champion: the bootstrap's DEFAULT artifact, else a fresh catalog model;
- challengers: by catalog name, each from its newest bootstrap artifact when there is
  one, else fresh;
- baseline: a second, frozen copy of the DEFAULT artifact (never learns).
"""

from __future__ import annotations

from typing import Optional, Sequence

from .artifacts import latest, load_artifact
from .engine import Engine
from .features import FeatureCaps, build_features
from .models import build_model
from .slots import PromotionPolicy


def build_engine(artifacts: Optional[str] = None, model: str = "logreg", features: str = "shop",
                 challengers: Sequence[str] = (), baseline: bool = True, seed: int = 42,
                 promotion: Optional[PromotionPolicy] = None, drift_reaction: str = "none",
                 caps: FeatureCaps = FeatureCaps(), mlp_learning_rate: Optional[float] = None,
                 **engine_options) -> tuple[Engine, str]:
    """A new partition's engine and where its champion came from. `mlp_learning_rate`, when
    given, is the Adam step of every `mlp` slot (fresh or from an artifact)."""
    if artifacts:
        default = load_artifact(artifacts)
        default.features.set_caps(caps)
        engine = Engine(default.model, default.features, model_name=default.meta["model"],
                        model_version=default.meta["version"], promotion=promotion,
                        drift_reaction=drift_reaction, **engine_options)
        origin = f"artifact:{default.meta['version']}"
        if baseline:
            frozen = load_artifact(default.path)  # its own copy: the champion's will learn
            engine.add_slot(f"{default.meta['model']}_baseline", frozen.model, "baseline", frozen.meta["version"])
    else:
        engine = Engine(build_model(model, seed), build_features(features, caps), model_name=model,
                        promotion=promotion, drift_reaction=drift_reaction, **engine_options)
        origin = "fresh"
    for name in challengers:
        if name == engine.model_name:
            continue
        found = latest(artifacts, name) if artifacts else None
        if found is not None:
            artifact = load_artifact(found)
            engine.add_slot(name, artifact.model, "challenger", artifact.meta["version"])
        else:
            engine.add_slot(name, build_model(name, seed), "challenger", "fresh")
    if mlp_learning_rate is not None:
        from .mlp import MLPClassifier

        for slot in engine.slots:
            if isinstance(slot.model, MLPClassifier):
                slot.model.lr = mlp_learning_rate
                slot.keep_as_good()
    return engine, origin
