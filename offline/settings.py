"""The offline stage's settings: ``shopstream bootstrap``'s, each default written once (the
command line derives its options from these fields, see `shopstream.options`).

>>> settings = BootstrapSettings.from_options(history="h.jsonl", holdout=0.3, epochs=4, window=600)
>>> settings.holdout, settings.epochs.epochs, settings.engine.window
(0.3, 4, 600.0)
>>> BootstrapSettings.from_options(holdout=1.0, history="h.jsonl")
Traceback (most recent call last):
...
shopstream.options.ConfigError: holdout 1.0 must be a fraction in [0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from shopstream.config import EngineConfig, GeneratorSettings
from shopstream.models import CATALOG, RENAMED
from shopstream.options import Settings, check, option_meta as _help, progress_bar
from shopstream.signing import key_setting


@dataclass(frozen=True)
class EpochSettings(Settings):
    """How epoch-trained models (`mlp`) are fitted offline: the seed's 10 epochs of 32.
    `lr` replaces the model's learning rate (the seed's 1e-3), offline and online after."""

    epochs: int = field(default=10, metadata=_help(
        "mlp: most epochs of mini-batch training (early stopping may end sooner)"))
    batch_size: int = field(default=32, metadata=_help("mlp: examples per mini-batch"))
    validation_split: float = 0.2
    patience: int = field(default=3, metadata=_help("mlp: epochs without a lower validation loss before stopping"))
    lr: float = field(default=1e-3, metadata=_help(
        "mlp: Adam learning rate, offline and then online (kept in the artifact)", flag="--learning-rate"))
    catch_up: bool = True   # then learn the validation rows online (see `bootstrap._fit_epochs`)

    def __post_init__(self) -> None:
        check(self, (("epochs", self.epochs >= 1, "must be >= 1"),
                     ("batch_size", self.batch_size >= 1, "must be >= 1"),
                     ("validation_split", 0 < self.validation_split < 1, "must be in (0, 1)"),
                     ("patience", self.patience >= 1, "must be >= 1"),
                     ("lr", self.lr is None or 0 < self.lr < 1, "must be in (0, 1)")))


@dataclass(frozen=True)
class BootstrapSettings(Settings):
    """``shopstream bootstrap``: a history (a file, or generated) -> trained, evaluated artifacts."""

    history: Optional[str] = field(default=None, metadata=_help(
        "history file: .jsonl, .csv (REES46) or .parquet", type=str))
    generate_events: int = field(default=0, metadata=_help(
        "without --history: generate this many events as the history"))
    seed: int = field(default=GeneratorSettings.seed, metadata=_help("generator seed (with --generate-events)"))
    out: str = field(default="artifacts", metadata=_help("artifacts directory"))
    model: tuple[str, ...] = field(default=("logreg", "logreg_adagrad", "hat"), metadata=_help("candidate models"))
    holdout: float = field(default=0.2, metadata=_help("fraction of the history (by time) held out"))
    columns: Optional[str] = field(default=None, metadata=_help(
        "column mapping OURS=THEIRS,... for other exports", type=str))
    max_bad_rows: Optional[int] = field(default=None, metadata=_help(
        "stop with an error after more bad rows than this (default: no limit, each is counted and skipped, the "
        "first ones listed in the report)", type=int))
    progress: bool = progress_bar()
    epochs: EpochSettings = EpochSettings()
    # A drift reaction is the workers' business: the bootstrap has no --drift-reaction.
    engine: EngineConfig = field(default=EngineConfig(), metadata={"skip": ("drift_reaction",)})
    signing_key: Optional[bytes] = key_setting()

    def __post_init__(self) -> None:
        check(self, (("history", bool(self.history) or self.generate_events > 0,
                      "is required (or SHOPSTREAM_HISTORY), or --generate-events N"),
                     ("generate_events", self.generate_events >= 0, "must be >= 0"),
                     ("out", bool(self.out.strip()), "must name a directory (empty: the current one)"),
                     ("holdout", 0 <= self.holdout < 1, "must be a fraction in [0, 1)"),
                     ("max_bad_rows", self.max_bad_rows is None or self.max_bad_rows >= 0, "must be >= 0"),
                     ("model", bool(self.model), "must name at least one model"),
                     # every name now, not when its turn comes after the others trained
                     ("model", all(name in CATALOG or name in RENAMED for name in self.model),
                      f"must be models of the catalog: {sorted(CATALOG)}")))
