"""The model catalog: named, seeded, picklable River classifiers.

`logreg` is River's defaults exactly (StandardScaler | LogisticRegression), so its
numbers can be compared with `river.evaluate.progressive_val_score`. `mlp` is the seed's
network in numpy (`mlp.py`), with the same classifier interface.

>>> model = build_model("logreg")
>>> model.predict_proba_one({"x": 1.0})
{False: 0.5, True: 0.5}
"""

from __future__ import annotations

from river import compose, forest, linear_model, optim, preprocessing, tree

from .mlp import MLPClassifier


def logreg(seed: int = 42) -> compose.Pipeline:
    """River's defaults, untouched: the reference model."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def logreg_tuned(seed: int = 42) -> compose.Pipeline:
    """Logistic regression with a faster-adapting optimizer, light L2 and an intercept
    that learns quickly: conversion rates are low and shift with the shop."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.Adam(lr=0.005), l2=1e-5, intercept_lr=0.05
    )


def hat(seed: int = 42) -> tree.HoeffdingAdaptiveTreeClassifier:
    """Hoeffding adaptive tree: replaces subtrees when drift is detected under them."""
    return tree.HoeffdingAdaptiveTreeClassifier(grace_period=100, seed=seed)


def arf(seed: int = 42) -> forest.ARFClassifier:
    """Adaptive random forest: accurate, several times slower than the linear models."""
    return forest.ARFClassifier(n_models=5, seed=seed)


def mlp(seed: int = 42) -> MLPClassifier:
    """The seed's network, Dense(64, relu) -> Dense(64, relu) -> Dense(1, sigmoid) with Adam
    (lr 1e-3): epoch-trained by the bootstrap, then one Adam step per resolved label."""
    return MLPClassifier(seed=seed)


CATALOG = {"logreg": logreg, "logreg_tuned": logreg_tuned, "hat": hat, "arf": arf, "mlp": mlp}


def build_model(name: str, seed: int = 42):
    """A fresh, untrained model from the catalog."""
    try:
        factory = CATALOG[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(CATALOG)}") from None
    return factory(seed)
