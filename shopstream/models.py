"""The model catalog: named, seeded, picklable River classifiers.

`logreg` is River's defaults exactly (StandardScaler | LogisticRegression), so its
numbers can be compared with `river.evaluate.progressive_val_score`. `mlp` is the seed's
network in numpy (`mlp.py`), with the same classifier interface.

The other logistic regressions differ from `logreg` only in how they step: River's
default constant SGD step (0.01) is too noisy on a shop's clickstream, and no single
fixed step suits every shop (QUALITY.md). Each is named after its optimizer, never after
a promise; `TUNING` in `lineup.py` runs them side by side so the promotion test picks
the step each shop needs.

>>> model = build_model("logreg")
>>> model.predict_proba_one({"x": 1.0})
{False: 0.5, True: 0.5}
"""

from __future__ import annotations

from river import compose, forest, linear_model, optim, preprocessing, tree

from .averaged import AveragedLogisticRegression
from .delayed import FakeNegativeWeighted
from .mlp import MLPClassifier


def logreg(seed: int = 42) -> compose.Pipeline:
    """River's defaults, untouched: the reference model."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def logreg_slow(seed: int = 42) -> compose.Pipeline:
    """River's logistic regression with a 10x smaller constant SGD step (0.001): smooth
    predictions on a stable shop, slower to follow a change."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.001))


def logreg_adagrad(seed: int = 42) -> compose.Pipeline:
    """AdaGrad (step 0.1): each weight's step shrinks with the gradients it has seen, so
    frequent features settle and rare ones (a new brand, a new category) still move."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.1))


def logreg_adam(seed: int = 42) -> compose.Pipeline:
    """Adam (step 0.001, Keras's default): per-weight steps from running gradient moments
    that, unlike AdaGrad's, never stop adapting."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.Adam(0.001))


def logreg_avg(seed: int = 42) -> compose.Pipeline:
    """River's default SGD step (0.01), predicting with the average of its last ~10,000
    iterates (`AveragedLogisticRegression`): the default's adaptation without its noise."""
    return preprocessing.StandardScaler() | AveragedLogisticRegression(optim.SGD(0.01), horizon=10_000)


def logreg_adagrad_fnw(seed: int = 42) -> FakeNegativeWeighted:
    """`logreg_adagrad` that learns each prediction at once as a provisional negative and
    corrects it when the purchase arrives (fake-negative weighting, `delayed.py`), instead
    of waiting for the attribution window to close."""
    return FakeNegativeWeighted(logreg_adagrad(seed))


def logreg_decay(seed: int = 42) -> compose.Pipeline:
    """SGD with a decaying step, 0.05 / sqrt(t + 1): converges on a stable shop, but
    after a few hundred thousand labels barely moves when the shop changes."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.SGD(optim.schedulers.InverseScaling(0.05, power=0.5)))


def logreg_adam_fast(seed: int = 42) -> compose.Pipeline:
    """Adam with a large step (0.005), light L2 and a fast intercept (0.05). Formerly
    `logreg_tuned`, renamed because it scored below `logreg` on every stream measured."""
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


CATALOG = {"logreg": logreg, "logreg_slow": logreg_slow, "logreg_adagrad": logreg_adagrad,
           "logreg_adam": logreg_adam, "logreg_avg": logreg_avg, "logreg_adagrad_fnw": logreg_adagrad_fnw,
           "logreg_decay": logreg_decay,
           "logreg_adam_fast": logreg_adam_fast, "hat": hat, "arf": arf, "mlp": mlp}

#: Old names still accepted by `build_model`, so configurations and commands that name
#: them keep working; new configurations should use the catalog name.
RENAMED = {"logreg_tuned": "logreg_adam_fast"}


def build_model(name: str, seed: int = 42):
    """A fresh, untrained model from the catalog (or under a name it had before).

    >>> build_model("logreg_tuned")[-1].optimizer.lr
    Constant({'learning_rate': 0.005})
    """
    try:
        factory = CATALOG[RENAMED.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(CATALOG)}") from None
    return factory(seed)
