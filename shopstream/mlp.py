"""The seed's network: Dense(64, relu) -> Dense(64, relu) -> Dense(1, sigmoid), Adam,
binary cross-entropy, in numpy, behind River's classifier interface.

Trained two ways with the same weights and optimizer state:

- offline, the seed's way (`fit_epochs`): mini-batches, several epochs, the last 20% of
  the rows held for validation, early stopping on validation loss, best epoch restored;
- online (`learn_one`): one Adam step per labelled example, as the workers do.

Inputs are standardised online like River's `StandardScaler` (running mean and variance
per feature name, updated by `learn_one` before the step), then clipped to +-`clip`
standard deviations. The logit is clipped to +-30, so every score is finite and strictly
between 0 and 1 whatever the input: non-finite values count as 0 (nan) or the raw bound
(+-inf), and raw values are clipped to +-1e15 so the running variance stays finite.

Feature names map to input rows in order of first appearance, up to `max_inputs` (later
names are ignored: a bound on memory and per-event cost for endless streams). A string
value is an indicator input ``name=value`` set to 1.0, as River's OneHotEncoder does. A
new name gets a row of the first layer:

- while the network has not learned anything, a random row (Glorot-uniform for a
  nominal fan-in of 64): with zero rows every hidden unit would stay at 0 and never learn;
- afterwards, a zero row (and zero Adam moments): the network computes exactly the same
  function as before, and the row learns from the gradient like any other.

Predicting never adds names: an unknown name has a zero (or not yet drawn) row either way.

>>> model = MLPClassifier(seed=1)
>>> for i in range(200):
...     model.learn_one({"x": float(i % 2), "noise": (i * 7) % 5 / 5}, bool(i % 2))
>>> model.predict_proba_one({"x": 1.0, "noise": 0.2})[True] > 0.9
True
>>> model.predict_proba_one({"x": 0.0, "noise": 0.2})[True] < 0.1
True
"""

from __future__ import annotations

import math

import numpy as np
from river import base

DTYPE = np.float32  # the network's parameters and activations, as Keras; the scaler is float64
RAW_BOUND = 1e15   # |raw value| cap: squares stay ~1e30, the running variance finite
LOGIT_BOUND = 30.0  # sigmoid(+-30) is 1e-13 from 0 or 1: log loss stays finite
# m decays by beta_1 = 0.9 per step: 100 steps take a value from 1e-30 to 2.7e-35, still
# above float32's smallest normal (1.2e-38).
FLUSH_EVERY, FLUSH_BELOW = 100, 1e-30


class MLPClassifier(base.Classifier):
    """Binary classifier: a 2-hidden-layer ReLU network trained with Adam.

    Parameters
    ----------
    hidden
        Width of each hidden layer (the seed: two layers of 64).
    lr
        Adam learning rate, offline and online (Keras's default, 1e-3).
    beta_1, beta_2, eps
        Adam's moment decays and epsilon (Keras's defaults).
    clip
        Standardised inputs are clipped to [-clip, clip].
    max_inputs
        At most this many input features; names seen after that are ignored.
    seed
        Seeds the initial weights and the offline shuffling: same seed, same data, same bits.
    """

    def __init__(self, hidden: tuple = (64, 64), lr: float = 1e-3, beta_1: float = 0.9,
                 beta_2: float = 0.999, eps: float = 1e-7, clip: float = 5.0, max_inputs: int = 512,
                 seed: int = 42):
        if len(hidden) != 2:
            raise ValueError("hidden: two layer widths, e.g. (64, 64)")
        self.hidden = tuple(hidden)
        self.lr = lr
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.eps = eps
        self.clip = clip
        self.max_inputs = max_inputs
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._index: dict = {}   # feature name -> input row
        self._t = 0              # Adam steps taken
        self._n_in = 0
        # Scaler state per input row (River StandardScaler's Welford update).
        self._count = np.zeros(0)
        self._mean = np.zeros(0)
        self._var = np.zeros(0)
        self._inv_std = np.zeros(0)   # 1/sqrt(var), 0 where var is 0 (River's safe_div)
        self._rows_cache: dict = {}   # tuple of names -> input rows (derived, not pickled)
        # Every parameter lives in one flat vector (one Adam update for all of them);
        # W1 comes last so that new inputs append to the end.
        h1, h2 = self.hidden
        self._fixed = h1 + h1 * h2 + h2 + h2 + 1   # b1, W2, b2, w3, b3
        theta = np.zeros(self._fixed, dtype=DTYPE)
        limit = math.sqrt(6.0 / (h1 + h2))
        theta[h1:h1 + h1 * h2] = self._rng.uniform(-limit, limit, h1 * h2)
        limit = math.sqrt(6.0 / (h2 + 1))
        theta[h1 + h1 * h2 + h2:h1 + h1 * h2 + 2 * h2] = self._rng.uniform(-limit, limit, h2)
        self._set_params(theta, np.zeros_like(theta), np.zeros_like(theta))

    # -- state ---------------------------------------------------------------------------

    def _set_params(self, theta, m, v) -> None:
        """Install the flat vectors and (re)build the views of each layer onto them."""
        self._theta, self._m, self._v = theta, m, v
        self._grad = np.zeros_like(theta)
        self._tmp = np.zeros_like(theta)
        self._views = [self._layers(theta), self._layers(self._grad)]

    def _layers(self, flat):
        h1, h2 = self.hidden
        b1 = flat[:h1]
        W2 = flat[h1:h1 + h1 * h2].reshape(h1, h2)
        at = h1 + h1 * h2
        b2, w3, b3 = flat[at:at + h2], flat[at + h2:at + 2 * h2], flat[at + 2 * h2:at + 2 * h2 + 1]
        W1 = flat[self._fixed:].reshape(self._n_in, h1)
        return W1, b1, W2, b2, w3, b3

    def __getstate__(self):
        # Views and scratch buffers are rebuilt on load: pickle the owners only.
        state = self.__dict__.copy()
        for name in ("_grad", "_tmp", "_views", "_rows_cache"):
            del state[name]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._rows_cache = {}
        self._set_params(self._theta, self._m, self._v)

    def _add_inputs(self, names: list) -> None:
        """Give each new name an input row (see the module docstring for how it starts)."""
        room = self.max_inputs - self._n_in
        names = names[:max(room, 0)]
        if not names:
            return
        for name in names:
            self._index[name] = self._n_in
            self._n_in += 1
        k, h1 = len(names), self.hidden[0]
        rows = np.zeros(k * h1, dtype=DTYPE)
        if self._t == 0:
            limit = math.sqrt(6.0 / (64 + h1))
            rows = self._rng.uniform(-limit, limit, k * h1).astype(DTYPE)
        grow = np.zeros(k)
        self._count = np.concatenate([self._count, grow])
        self._mean = np.concatenate([self._mean, grow])
        self._var = np.concatenate([self._var, grow])
        self._inv_std = np.concatenate([self._inv_std, grow])
        zeros = np.zeros(k * h1, dtype=DTYPE)
        self._set_params(np.concatenate([self._theta, rows]), np.concatenate([self._m, zeros]),
                         np.concatenate([self._v, zeros]))

    # -- inputs ------------------------------------------------------------------------

    def _parse(self, x: dict, grow: bool):
        """Feature dict -> (input rows, raw values clipped to +-RAW_BOUND, nan as 0)."""
        keys = tuple(x)
        rows = self._rows_cache.get(keys)
        if rows is not None:
            # Fast path: this exact list of names was seen, all numeric, all with a row.
            raw = np.array(list(x.values()))
            if raw.dtype.kind not in "fiub":  # a string among the values: take the slow path
                rows = None
            else:
                raw = raw.astype(float)
        if rows is None:
            rows, raw, cacheable = self._parse_slow(x, grow)
            if cacheable and len(rows) == len(keys):
                if len(self._rows_cache) >= 1024:  # bound it: raw streams can vary their names
                    self._rows_cache.clear()
                self._rows_cache[keys] = rows
        np.maximum(raw, -RAW_BOUND, out=raw)
        np.minimum(raw, RAW_BOUND, out=raw)
        total = raw.sum()
        if total != total:  # a nan (the clip keeps nan): count it as 0
            raw[np.isnan(raw)] = 0.0
        return rows, raw

    def _parse_slow(self, x: dict, grow: bool):
        index = self._index
        rows, values, new = [], [], []
        cacheable = True
        for name, value in x.items():
            if isinstance(value, str):
                name, value, cacheable = f"{name}={value}", 1.0, False
            try:
                value = float(value)
            except (TypeError, ValueError, OverflowError):
                cacheable = False
                continue
            i = index.get(name)
            if i is None:
                if grow:
                    new.append((name, value))
                else:
                    cacheable = False
                continue
            rows.append(i)
            values.append(value)
        if new:
            cacheable = False  # new rows come after the known ones, out of the dict's order
            self._add_inputs([name for name, _ in new])
            for name, value in new:
                i = index.get(name)
                if i is None:
                    cacheable = False   # past max_inputs
                    continue
                rows.append(i)
                values.append(value)
        # Cached only when rows follow the dict's order one to one (no new or skipped name).
        return np.array(rows, dtype=np.intp), np.array(values, dtype=float), cacheable

    def _update_scaler(self, rows, raw) -> None:
        count = self._count[rows] + 1.0
        old = self._mean[rows]
        new = old + (raw - old) / count
        self._count[rows] = count
        self._mean[rows] = new
        var = self._var[rows] + ((raw - old) * (raw - new) - self._var[rows]) / count
        self._var[rows] = var
        std = np.sqrt(var)
        self._inv_std[rows] = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0.0)

    def _dense(self, rows, raw):
        """Standardised, clipped inputs as one dense vector (absent names are 0, the mean)."""
        scaled = (raw - self._mean[rows]) * self._inv_std[rows]
        np.maximum(scaled, -self.clip, out=scaled)
        np.minimum(scaled, self.clip, out=scaled)
        x = np.zeros(self._n_in, dtype=DTYPE)
        x[rows] = scaled
        return x

    # -- River's interface ---------------------------------------------------------------

    def predict_proba_one(self, x: dict, **kwargs) -> dict:
        rows, raw = self._parse(x, grow=False)
        W1, b1, W2, b2, w3, b3 = self._views[0]
        h = np.maximum(self._dense(rows, raw) @ W1 + b1, 0.0)
        h = np.maximum(h @ W2 + b2, 0.0)
        p = _sigmoid(float(h @ w3) + float(b3[0]))
        return {False: 1.0 - p, True: p}

    def learn_one(self, x: dict, y: bool | str | int, **kwargs) -> None:
        rows, raw = self._parse(x, grow=True)
        self._update_scaler(rows, raw)
        xd = self._dense(rows, raw)
        W1, b1, W2, b2, w3, b3 = self._views[0]
        gW1, gb1, gW2, gb2, gw3, gb3 = self._views[1]
        a1 = xd @ W1 + b1
        h1 = np.maximum(a1, 0.0)
        a2 = h1 @ W2 + b2
        h2 = np.maximum(a2, 0.0)
        d3 = _sigmoid(float(h2 @ w3) + float(b3[0])) - (1.0 if y else 0.0)  # dBCE/dlogit
        np.multiply(h2, d3, out=gw3)
        gb3[0] = d3
        d2 = w3 * d3
        d2[a2 <= 0.0] = 0.0
        np.multiply(h1[:, None], d2, out=gW2)
        gb2[:] = d2
        d1 = W2 @ d2
        d1[a1 <= 0.0] = 0.0
        np.multiply(xd[:, None], d1, out=gW1)
        gb1[:] = d1
        self._adam_step()

    # -- training ------------------------------------------------------------------------

    def _adam_step(self) -> None:
        """theta -= lr_t * m / (sqrt(v) + eps), Keras's form, in place over every parameter."""
        self._t += 1
        b_1, b_2 = self.beta_1, self.beta_2
        lr_t = self.lr * math.sqrt(1.0 - b_2 ** self._t) / (1.0 - b_1 ** self._t)
        g, m, v, tmp = self._grad, self._m, self._v, self._tmp
        m *= b_1
        np.multiply(g, 1.0 - b_1, out=tmp)
        m += tmp
        v *= b_2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b_2
        v += tmp
        np.sqrt(v, out=tmp)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= lr_t
        self._theta -= tmp
        if self._t % FLUSH_EVERY == 0:
            # Moments of weights that get no gradient (dead ReLU units, absent inputs)
            # decay towards subnormal floats, which make every later step many times
            # slower; zero them while they are still normal (their updates are ~0 anyway).
            m[np.abs(m) < FLUSH_BELOW] = 0.0
            v[v < FLUSH_BELOW] = 0.0

    def _forward_batch(self, X):
        W1, b1, W2, b2, w3, b3 = self._views[0]
        a1 = X @ W1 + b1
        h1 = np.maximum(a1, 0.0)
        a2 = h1 @ W2 + b2
        h2 = np.maximum(a2, 0.0)
        z = np.clip(h2 @ w3 + b3[0], -LOGIT_BOUND, LOGIT_BOUND)
        return a1, h1, a2, h2, z

    def _batch_step(self, X, y) -> None:
        """One Adam step on the mean binary cross-entropy of a mini-batch."""
        W1, b1, W2, b2, w3, b3 = self._views[0]
        gW1, gb1, gW2, gb2, gw3, gb3 = self._views[1]
        a1, h1, a2, h2, z = self._forward_batch(X)
        d3 = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
        gw3[:] = h2.T @ d3
        gb3[0] = d3.sum()
        d2 = np.outer(d3, w3)
        d2[a2 <= 0.0] = 0.0
        gW2[:] = h1.T @ d2
        gb2[:] = d2.sum(axis=0)
        d1 = d2 @ W2.T
        d1[a1 <= 0.0] = 0.0
        gW1[:] = X.T @ d1
        gb1[:] = d1.sum(axis=0)
        self._adam_step()

    def evaluate(self, X, y) -> tuple[float, float]:
        """(mean binary cross-entropy, accuracy at 0.5) on a scaled input matrix."""
        z = self._forward_batch(X)[-1]
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))  # softplus(z) - y z, stable
        accuracy = float(np.mean((z > 0.0) == (y > 0.5)))
        return loss, accuracy

    def fit_epochs(self, xs: list, ys: list, epochs: int = 10, batch_size: int = 32,
                   validation_split: float = 0.2, patience: int = 3) -> dict:
        """Train the seed's way on labelled rows in time order; return the per-epoch history.

        The last `validation_split` of the rows validates (Keras's `validation_split`: no
        shuffle before the split, so in time order it is the most recent data); the scaler
        is fitted on the rest and frozen during the epochs. Batches are shuffled each epoch.
        Training stops after `patience` epochs without a lower validation loss, and the
        weights *and* optimizer state of the best epoch are restored, so online learning
        continues from that epoch.
        """
        if epochs < 1 or batch_size < 1 or not 0.0 < validation_split < 1.0:
            raise ValueError("need epochs >= 1, batch_size >= 1 and 0 < validation_split < 1")
        n_val = int(len(xs) * validation_split)
        n_fit = len(xs) - n_val
        if n_fit < 1 or n_val < 1:
            raise ValueError(f"{len(xs)} labelled rows: too few to hold {validation_split:.0%} for validation")
        parsed = [self._parse(x, grow=True) for x in xs[:n_fit]]
        for rows, raw in parsed:
            self._update_scaler(rows, raw)
        X_fit = np.stack([self._dense(rows, raw) for rows, raw in parsed])
        X_val = np.stack([self._dense(*self._parse(x, grow=False)) for x in xs[n_fit:]])
        y_all = np.array(ys, dtype=DTYPE)
        y_fit, y_val = y_all[:n_fit], y_all[n_fit:]

        history, best, waited = [], None, 0
        for epoch in range(1, epochs + 1):
            order = self._rng.permutation(n_fit)
            for start in range(0, n_fit, batch_size):
                batch = order[start:start + batch_size]
                self._batch_step(X_fit[batch], y_fit[batch])
            loss, accuracy = self.evaluate(X_fit, y_fit)
            val_loss, val_accuracy = self.evaluate(X_val, y_val)
            history.append({"epoch": epoch, "loss": loss, "accuracy": accuracy,
                            "val_loss": val_loss, "val_accuracy": val_accuracy})
            if best is None or val_loss < best[1]:
                best = (epoch, val_loss, self._theta.copy(), self._m.copy(), self._v.copy(), self._t)
                waited = 0
            else:
                waited += 1
                if waited >= patience:
                    break
        assert best is not None, "at least one epoch ran"
        epoch, _, theta, m, v, t = best
        self._set_params(theta, m, v)
        self._t = t
        return {"epochs": epochs, "batch_size": batch_size, "validation_split": validation_split,
                "patience": patience, "lr": self.lr, "fit_rows": n_fit, "validation_rows": n_val,
                "best_epoch": epoch, "epochs_run": len(history), "history": history}

    @classmethod
    def _unit_test_params(cls):
        yield {"seed": 1}


def _sigmoid(z: float) -> float:
    z = min(max(z, -LOGIT_BOUND), LOGIT_BOUND)
    return 1.0 / (1.0 + math.exp(-z))
