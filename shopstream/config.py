"""The core's settings, each default written once: the engine's and the generator's.

`EngineConfig` is what one partition's engine runs under: the feature set, the label
rules (attribution window, lateness), the caps on its state and the rolling metrics. The
bootstrap records it in every artifact; a worker whose settings contradict its artifact's
on what the model was trained and evaluated under (`TRAINED_UNDER`) refuses to start
unless told to adopt the artifact's. The command line derives its options (and their
``SHOPSTREAM_*`` variables) from these fields: their defaults and ``help`` metadata.

>>> config = EngineConfig(window=600)
>>> config.window, config.features
(600.0, 'shop')
>>> config.contradictions(EngineConfig())
['window 600.0 (the artifact: 1800.0)']
>>> EngineConfig(window=-5)
Traceback (most recent call last):
...
shopstream.options.ConfigError: window -5.0 must be > 0 seconds
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterator, Mapping

from .features import FEATURE_SETS as _FEATURE_BUILDERS
from .generator import MAX_USER_SHARE, Drift, generate
from .options import ConfigError, Settings, check, option_meta as _help

FEATURE_SETS = tuple(_FEATURE_BUILDERS)
DRIFT_REACTIONS = ("none", "challenger", "reset")
#: The longest span the generator spreads its events over, in days.
MAX_DAYS = 36_500
#: The settings a model was trained and evaluated under: a worker must run with the same.
TRAINED_UNDER = ("features", "window", "lateness")


@dataclass(frozen=True)
class EngineConfig(Settings):
    """Settings of one partition's predict-then-learn engine (see `engine.py`)."""

    features: str = field(default="shop", metadata=_help("feature set: raw or shop", choices=FEATURE_SETS))
    window: float = field(default=1800.0, metadata=_help("attribution window in seconds of event time"))
    lateness: float = field(default=0.0, metadata=_help("allowed lateness of events in seconds"))
    max_open: int = field(default=1_000_000, metadata=_help("cap on open predictions per partition"))
    max_time_jump: float = field(default=10_800.0, metadata=_help(
        "an event more than this many seconds ahead of its partition's event time moves the watermark only once "
        "such events of 8 distinct users outnumber the others (a minority whose clock runs fast is outvoted); "
        "0: no guard"))
    metric_window: int = field(default=1000, metadata=_help("resolved predictions in the rolling metrics"))
    drift_delta: float = field(default=1e-6, metadata=_help(
        "ADWIN confidence for drift in a model's errors (smaller: fewer alarms)"))
    drift_reaction: str = field(default="none", metadata=_help(
        "on drift in the champion's errors: none, challenger (add a fresh one) or reset (to the bootstrap model)",
        choices=DRIFT_REACTIONS))
    dedupe: int = 100_000  # recent event ids remembered to drop redeliveries (no option: rarely worth tuning)

    def __post_init__(self) -> None:
        # Coerce ints given for floats (JSON, --window 600) so equal settings compare equal.
        for name in ("window", "lateness", "max_time_jump", "drift_delta"):
            object.__setattr__(self, name, float(getattr(self, name)))
            # the worker's rule (stream/settings.py), here for every user (the bootstrap): an infinite
            # window or lateness holds every prediction open forever, and NaN passes every bound
            check(self, ((name, math.isfinite(getattr(self, name)), "must be a finite number"),))
        check(self, (
            ("features", self.features in FEATURE_SETS, f"must be one of {FEATURE_SETS}"),
            ("window", self.window > 0, "must be > 0 seconds"),
            ("lateness", self.lateness >= 0, "must be >= 0 seconds"),
            ("max_open", self.max_open >= 1, "must be >= 1"),
            ("max_time_jump", self.max_time_jump >= 0, "must be >= 0 seconds (0: no guard)"),
            ("metric_window", self.metric_window >= 1, "must be >= 1"),
            ("drift_delta", 0 < self.drift_delta < 1, "must be in (0, 1)"),
            ("drift_reaction", self.drift_reaction in DRIFT_REACTIONS, f"must be one of {DRIFT_REACTIONS}"),
            ("dedupe", self.dedupe >= 0, "must be >= 0"),
        ))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EngineConfig":
        """From a recorded dict; names this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def of_artifact(cls, meta: Mapping[str, Any]) -> "EngineConfig":
        """What an artifact was trained under (artifacts from before `engine` was recorded
        carry the same facts under older keys)."""
        if "engine" in meta:
            return cls.from_dict(meta["engine"])
        return cls(features=meta.get("feature_set", cls.features), window=meta.get("label_window_seconds", cls.window),
                   lateness=meta.get("lateness_seconds", cls.lateness))

    def contradictions(self, trained: "EngineConfig") -> list[str]:
        """The `TRAINED_UNDER` settings where this config differs from the artifact's."""
        return [f"{name} {getattr(self, name)!r} (the artifact: {getattr(trained, name)!r})"
                for name in TRAINED_UNDER if getattr(self, name) != getattr(trained, name)]

    def adopting(self, trained: "EngineConfig") -> "EngineConfig":
        """This config with the artifact's `TRAINED_UNDER` settings."""
        return replace(self, **{name: getattr(trained, name) for name in TRAINED_UNDER})


@dataclass(frozen=True)
class GeneratorSettings(Settings):
    """The synthetic shop of `generator.generate` (``shopstream generate``, and ``produce`` without
    a file)."""

    events: int = field(default=100_000, metadata=_help("number of events to generate"))
    seed: int = field(default=7, metadata=_help("random seed (same seed, same events)"))
    days: float = field(default=30.0, metadata=_help("time span in days"))
    drift: tuple[str, ...] = field(default=(), metadata=_help(
        "drift scenario(s), e.g. checkout_incident@0.5-0.7:android price_shock@0.8"))
    max_user_share: float = field(default=MAX_USER_SHARE, metadata=_help(
        "cap on one user's share of the sessions (1: uncapped, a skewed shop)"))

    def __post_init__(self) -> None:
        check(self, (("events", self.events >= 0, "must be >= 0"),
                     # (1e309 is infinite: the generator's time arithmetic overflowed)
                     ("days", math.isfinite(self.days) and 0 < self.days <= MAX_DAYS,
                      f"must be > 0 and at most {MAX_DAYS} (a century)"),
                     ("max_user_share", 0 < self.max_user_share <= 1, "must be in (0, 1]")))
        self.drifts()

    def drifts(self) -> tuple[Drift, ...]:
        try:
            return tuple(Drift.parse(text) for text in self.drift)
        except ValueError as exc:
            raise ConfigError("drift", list(self.drift), f"is not a drift scenario: {exc}") from None

    def generate(self) -> Iterator[dict]:
        """The events, as `generator.generate` yields them."""
        return generate(self.events, seed=self.seed, days=self.days, drifts=self.drifts(),
                        max_user_share=self.max_user_share)


@dataclass(frozen=True)
class GenerateSettings(Settings):
    """``shopstream generate``: the generator's settings and where the events go."""

    generator: GeneratorSettings = GeneratorSettings()
    out: str = field(default="events.jsonl", metadata=_help("output .jsonl file"))

    def __post_init__(self) -> None:
        check(self, (("out", bool(self.out.strip()), "must name a file"),))
