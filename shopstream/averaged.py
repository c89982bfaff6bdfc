"""Logistic regression that learns with plain SGD and predicts with an average of its weights."""

from __future__ import annotations

from river import linear_model, optim


class AveragedLogisticRegression(linear_model.LogisticRegression):
    """Logistic regression whose predictions use an exponential moving average of its
    SGD iterates (Polyak-Ruppert averaging with a finite memory).

    A constant SGD step keeps the weights jumping around the optimum by an amount
    proportional to the step: a large step adapts fast but predicts noisily, a small one
    predicts smoothly but adapts slowly. Averaging the iterates keeps most of the large
    step's adaptation and removes most of its noise. Over the first `horizon` updates the
    average is uniform (plain averaged SGD); after that each update has weight
    1 / `horizon`, so weights from a shop that has since changed fade out.

    River's `optim.Averager` is not used: `LogisticRegression` ignores the weights an
    optimizer returns, so wrapping SGD in it predicts exactly like SGD alone (0.26.1).

    Parameters
    ----------
    optimizer
        The optimizer whose iterates are averaged. Defaults to `optim.SGD(0.01)`, River's
        default step.
    l2
        L2 penalty, as in `LogisticRegression`.
    intercept_lr
        The intercept's step, as in `LogisticRegression`; the intercept is averaged too.
    horizon
        Memory of the average, in updates.

    Examples
    --------

    >>> from river import datasets, evaluate, metrics, preprocessing
    >>> model = preprocessing.StandardScaler() | AveragedLogisticRegression(horizon=500)
    >>> evaluate.progressive_val_score(datasets.Phishing(), model, metrics.ROCAUC())
    ROCAUC: 94.28%

    Before any update the average is the initial (zero) weights:

    >>> AveragedLogisticRegression().predict_proba_one({"x": 2.0})
    {False: 0.5, True: 0.5}

    """

    def __init__(self, optimizer: optim.base.Optimizer | None = None, l2: float = 0.0,
                 intercept_lr: float = 0.01, horizon: int = 10_000):
        super().__init__(optimizer=optimizer, l2=l2, intercept_lr=intercept_lr)
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon!r}")
        self.horizon = horizon
        self.n_updates = 0
        self.average: dict = {}
        self.average_intercept = self.intercept

    def learn_one(self, x, y, w=1.0) -> None:
        super().learn_one(x, y, w)
        self.n_updates += 1
        rate = 1.0 / min(self.n_updates, self.horizon)
        average = self.average
        # Every weight is folded in, not only this example's features: an average that
        # lags a weight must keep moving towards it even while that feature is absent.
        for name, weight in self._weights.items():
            mean = average.get(name, 0.0)
            average[name] = mean + rate * (weight - mean)
        self.average_intercept += rate * (self.intercept - self.average_intercept)

    def predict_proba_one(self, x):
        average = self.average
        logit = self.average_intercept + sum(average.get(name, 0.0) * value for name, value in x.items())
        p = self.loss.mean_func(logit)
        return {False: 1.0 - p, True: p}
