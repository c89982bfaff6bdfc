#!/usr/bin/env python3
"""How many resolved labels each promotion test needs to promote a challenger that is truly
better by 0.01 ROC AUC, and how often it promotes one that is not, at purchase rates of
3%, 12% and 30%.

    python benchmarks/promotion.py [--events 60000] [--runs 30] [--null-labels 500000] [--out FILE.md]

The shops: `shopstream.generator` (stable, seed 7) streamed through the engine (feature set
`shop`, 30-minute window); a batch logistic regression fitted on all its resolved labels
gives each prediction a score (its logit). A shop with purchase rate r draws labels with
probability r and a prediction of that class from the generated ones (the class-conditional
scores are the generated shop's; the logit is shifted by the change of prior odds, so the
scores stay calibrated). Models are that score plus independent Gaussian noise on the logit:
the champion and the "equal" challengers with noise `SIGMA`, the better challenger with less
noise, set so that its exact ROC AUC is 0.01 higher (measured on 400,000 draws).

Every run uses the line-up's shape: one champion, four challengers (`lineup.TUNING`), so the
Bonferroni share is alpha / 4.

- *labels to promote*: one better challenger and three equal ones; resolved labels until the
  first promotion (median and 90th percentile over `--runs` streams, capped at `--cap`), and
  how many of those first promotions picked an equal challenger instead;
- *false promotions per 100k labels*: four equal challengers for `--null-labels` labels;
  every promotion is false (after one the comparisons start over, as in the engine).

Tests: ``before``, the engine's rule until now (River's 10-threshold rolling ROC AUC over the
last 1,000 predictions ahead by 0.01 and a paired log-loss z >= 3.09 over the last 2,000, no
cooldown, no correction for several challengers), and `lineup.PromotionPolicy` with each
`test` (exact windowed ROC AUC with DeLong's z, log loss, both), defaults otherwise.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import special

from shopstream.engine import Engine
from shopstream.evaluation import BatchLogisticRegression, log_loss, roc_auc, vectorize
from shopstream.events import event_from_record
from shopstream.generator import generate
from shopstream.recording import record
from shopstream.scoring import ThresholdROCAUC
from shopstream.lineup import PromotionPolicy
from shopstream.slots import PairedLossTest, paired_loss

RATES = (0.03, 0.12, 0.30)
N_CHALLENGERS = 4
CHAMPION_LOSS = 0.02   # the champion's ROC AUC below the batch fit's (online SGD models trail it by 0.004-0.03)


def shop_scores(n_events: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, batch-fitted logits and standardised features of a generated stable shop's
    resolved predictions."""
    engine = Engine.fresh("logreg", "shop")
    calls = record(engine)
    for event in generate(n_events, seed=seed, days=n_events / 200_000 * 30):
        engine.process(event_from_record(event))
    arrays = calls.arrays()
    keep = np.flatnonzero(arrays["resolved"])
    X, _ = vectorize([calls.xs[i] for i in keep])
    y = arrays["y"][keep]
    model = BatchLogisticRegression().fit(X, y)
    p = model.predict_proba(X)[:, 1]
    return y, special.logit(np.clip(p, 1e-12, 1 - 1e-12)), (X - model.mean) / model.scale


class Models:
    """Linear models around the batch fit: model k's logit is the fit's plus `c_k` times the
    features' projection on a random unit direction `u_k` of weight space, `c_k` set so its
    exact ROC AUC is a target. Like two real logistic regressions, they differ by a function
    of the features, not by noise drawn per prediction."""

    def __init__(self, y, logit, Z, seed: int):
        self.y, self.logit, self.Z = y, logit, Z
        self.rng = np.random.default_rng(seed)
        self.best = roc_auc(y, logit)

    def direction(self, near=None, angle: float = 90.0) -> np.ndarray:
        """A random unit direction; with `near`, at `angle` degrees from it."""
        v = self.rng.normal(size=self.Z.shape[1])
        if near is None:
            return v / np.linalg.norm(v)
        v -= (v @ near) * near
        v /= np.linalg.norm(v)
        return math.cos(math.radians(angle)) * near + math.sin(math.radians(angle)) * v

    def with_auc(self, target: float, u) -> np.ndarray:
        projection = self.Z @ u
        low, high = 0.0, 1.0
        while roc_auc(self.y, self.logit + high * projection) > target:
            high *= 2
        for _ in range(40):
            mid = (low + high) / 2
            if roc_auc(self.y, self.logit + mid * projection) > target:
                low = mid
            else:
                high = mid
        return self.logit + (low + high) / 2 * projection


class Shop:
    """Draws rows at purchase rate `rate` from the generated shop's predictions; each model's
    logit shifted by the change of prior odds (so it stays calibrated)."""

    def __init__(self, y, logits: np.ndarray, rate: float):
        shift = special.logit(rate) - special.logit(y.mean())
        self.positives, self.negatives = np.flatnonzero(y), np.flatnonzero(~y)
        self.logits = logits + shift      # (models, rows)
        self.rate = rate

    def draw(self, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
        y = rng.random(n) < self.rate
        rows = np.where(y, rng.choice(self.positives, n), rng.choice(self.negatives, n))
        return y, special.expit(self.logits[:, rows])


class BeforeRule:
    """The engine's rule before this change: River-threshold AUC lead >= 0.01 on the last
    1,000 and paired log-loss z >= 3.09 on the last 2,000, both after 2,000 pairs."""

    window, check_every, cooldown = 2000, 250, 0

    def choose(self, comparisons):
        best = None
        for name, test in comparisons:
            if test.n < 2000:
                continue
            y, a, b = test.pairs()
            recent = np.roll(np.arange(test.n), -test._next)[-1000:]   # the newest 1,000, ring order
            gain = river_auc(y[recent], b[recent]) - river_auc(y[recent], a[recent])
            z = paired_loss(y, a, b)[1]
            if gain >= 0.01 and z >= 3.09 and (best is None or z > best[1]["z"]):
                best = (name, {"z": z})
        return best


def river_auc(y, p) -> float:
    auc = ThresholdROCAUC()
    buckets = np.searchsorted(auc.thresholds, p, side="left")
    auc.positives = np.bincount(buckets[y], minlength=len(auc.positives)).tolist()
    auc.negatives = np.bincount(buckets[~y], minlength=len(auc.negatives)).tolist()
    return auc.get()


def run_stream(policy, shop: Shop, n_labels: int, rng, stop_at_first: bool):
    """Stream labels through champion 0 and challengers 1.. (the shop's models): the engine's
    comparison objects and the policy's decisions every `check_every` (between two checks
    the pairs are added at once: nothing is decided in between), its cooldown after a
    promotion. Returns [(labels so far, promoted model)]."""
    step = policy.check_every
    chunk = step * max(1, 20_000 // step)
    n_models = len(shop.logits)
    champion = 0
    tests = {i: PairedLossTest(policy.window) for i in range(1, n_models)}
    promotions: list = []
    last = None
    done = 0
    while done < n_labels:
        y, p = shop.draw(chunk, rng)
        for start in range(0, chunk, step):
            if done >= n_labels:
                break
            block = slice(start, start + step)
            for i, test in tests.items():
                test.extend(y[block], p[champion, block], p[i, block])
            done += step
            if last is not None and done - last < policy.cooldown:
                continue
            chosen = policy.choose((str(i), test) for i, test in tests.items())
            if chosen is not None:
                new = int(chosen[0])
                promotions.append((done, new))
                if stop_at_first:
                    return promotions
                champion, last = new, done
                tests = {i: PairedLossTest(policy.window) for i in range(n_models) if i != champion}
    return promotions


def measure(policies: dict, rates, runs: int, cap: int, null_labels: int, models: Models, seed: int,
            angle: float) -> list[dict]:
    """The challengers' errors (their directions from the batch fit) are `angle` degrees from
    the champion's: small, models that err alike (steps of one logistic regression); 90,
    models whose errors are unrelated."""
    champion_auc = models.best - CHAMPION_LOSS
    u = models.direction()
    champion = models.with_auc(champion_auc, u)
    better = models.with_auc(champion_auc + 0.01, models.direction(u, angle))
    equal = [models.with_auc(champion_auc, models.direction(u, angle)) for _ in range(N_CHALLENGERS)]
    y = models.y
    correlations = []
    for name, logit in [("champion", champion), ("better", better)] + [(f"equal {i}", e) for i, e in enumerate(equal)]:
        p = special.expit(logit)
        correlations.append(np.corrcoef(logit, champion)[0, 1])
        print(f"[{angle:g} degrees] model {name}: ROC AUC {roc_auc(y, p):.4f}, log loss {log_loss(y, p):.4f}, "
              f"correlation of logits with the champion's {correlations[-1]:.4f}", flush=True)
    rows = []
    for rate in rates:
        with_better = Shop(y, np.array([champion, better] + equal[:N_CHALLENGERS - 1]), rate)
        null = Shop(y, np.array([champion] + equal), rate)
        for name, policy in policies.items():
            started = time.perf_counter()
            rng = np.random.default_rng(seed + 1)
            firsts, wrong, never = [], 0, 0
            for _ in range(runs):
                found = run_stream(policy, with_better, cap, rng, stop_at_first=True)
                if not found:
                    never += 1
                    firsts.append(cap)
                else:
                    at, index = found[0]
                    firsts.append(at)
                    wrong += index != 1
            false = run_stream(policy, null, null_labels, np.random.default_rng(seed + 2), stop_at_first=False)
            rows.append({"angle": angle, "correlation": float(np.mean(correlations[1:])), "rate": rate,
                         "test": name, "median": float(np.median(firsts)),
                         "p90": float(np.percentile(firsts, 90)), "never": never, "wrong": wrong, "runs": runs,
                         "false": len(false), "false_per_100k": len(false) / null_labels * 100_000,
                         "seconds": time.perf_counter() - started})
            r = rows[-1]
            print(f"[{angle:g} degrees, {rate:.0%}, {name}] median {r['median']:,.0f} labels, p90 {r['p90']:,.0f}, "
                  f"not within {cap:,}: {never}/{runs}, wrong first: {wrong}; false promotions: {len(false)} in "
                  f"{null_labels:,} ({r['false_per_100k']:.2f} per 100k); {r['seconds']:.0f} s", flush=True)
    return rows


def markdown(rows, args, seconds: float) -> str:
    lines = [f"Generated with `python benchmarks/promotion.py --events {args.events} --runs {args.runs} "
             f"--cap {args.cap} --null-labels {args.null_labels} --angles {args.angles} --seed {args.seed}` in "
             f"{seconds / 60:.0f} min on {platform.machine()}, Python {platform.python_version()} (a shared 2-core "
             "machine).", "",
             f"| challengers' errors vs the champion's (logit correlation) | purchase rate | test | labels to promote "
             f"a +0.01 AUC challenger: median / p90 | not within {args.cap:,} | first promotion not the better one "
             f"| false promotions per 100k labels ({args.null_labels:,} labels) |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['angle']:g} degrees ({r['correlation']:.3f}) | {r['rate']:.0%} | {r['test']} | "
                     f"{r['median']:,.0f} / {r['p90']:,.0f} | {r['never']}/{r['runs']} | {r['wrong']}/{r['runs']} | "
                     f"{r['false_per_100k']:.2f} ({r['false']}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=60_000, help="events of the generated shop the scores come from")
    parser.add_argument("--runs", type=int, default=30, help="streams per rate and test for the labels to promote")
    parser.add_argument("--cap", type=int, default=20_000, help="labels per stream before giving up")
    parser.add_argument("--null-labels", type=int, default=500_000, help="labels with only equal challengers")
    parser.add_argument("--tests", default="before,auc,log_loss,auc_and_log_loss")
    parser.add_argument("--rates", default=",".join(str(r) for r in RATES))
    parser.add_argument("--angles", default="15,90", help="degrees between the challengers' and the champion's errors")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", help="write the Markdown table here too")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    y, logit, Z = shop_scores(args.events, args.seed)
    print(f"shop: {len(y):,} resolved predictions, purchase rate {y.mean():.3f}, batch fit's ROC AUC "
          f"{roc_auc(y, logit):.4f}", flush=True)
    models = Models(y, logit, Z, args.seed)
    policies = {}
    for name in args.tests.split(","):
        policies[name] = BeforeRule() if name == "before" else replace(PromotionPolicy(), test=name)
    rows = []
    for angle in (float(a) for a in args.angles.split(",")):
        rows += measure(policies, [float(r) for r in args.rates.split(",")], args.runs, args.cap, args.null_labels,
                        models, args.seed, angle)
    text = markdown(rows, args, time.perf_counter() - started)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
