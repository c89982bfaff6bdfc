"""One frozen settings object for a worker, built from the CLI (flags or SHOPSTREAM_* env)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from typing import Optional

from shopstream.events import MAX_FUTURE_SKEW
from shopstream.features import FeatureCaps
from shopstream.slots import PromotionPolicy


@dataclass(frozen=True)
class WorkerSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: Optional[str] = None
    sasl_username: Optional[str] = None
    sasl_password: Optional[str] = field(default=None, repr=False)   # never in a repr or a log
    ssl_cafile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None
    topic: str = "shop-events"
    group: str = "shopstream"
    predictions_topic: str = "shop-predictions"
    dead_letter_topic: str = "shop-events-dlq"
    artifacts: Optional[str] = None
    model: str = "logreg"
    features: str = "shop"
    seed: int = 42
    window: float = 1800.0
    lateness: float = 0.0
    metric_window: int = 1000
    max_open: int = 1_000_000
    drift_delta: float = 1e-6
    checkpoints: str = "checkpoints"
    checkpoint_store: str = "dir"          # "dir" (--checkpoints) or "kafka" (--checkpoint-topic)
    checkpoint_topic: str = "shopstream-checkpoints"
    checkpoint_every: int = 10_000
    checkpoint_seconds: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    max_events: int = 0
    until_idle: float = 0.0
    client_id: Optional[str] = None
    session_timeout_ms: int = 10_000   # how soon a dead worker's partitions move
    # Longer than any legitimate join (bounded by the 300 s rebalance timeout): then rebuild the consumer.
    rejoin_deadline: float = 360.0
    challengers: tuple = ()
    baseline: bool = True
    auto_promote: bool = True
    promotion_margin: float = 0.01
    promotion_min_resolved: int = 2000
    drift_reaction: str = "none"
    control_topic: str = "shop-control"

    max_poll_records: int = 1000
    max_future_skew: float = MAX_FUTURE_SKEW
    mlp_learning_rate: Optional[float] = None  # Adam step of mlp slots in new partitions (None: as built)
    force_fresh_start: bool = False   # start a partition over when its checkpoint is refused
    log_level: str = "INFO"
    max_sessions: int = FeatureCaps.sessions
    max_users: int = FeatureCaps.users
    max_products: int = FeatureCaps.products
    max_brands: int = FeatureCaps.brands
    max_categories: int = FeatureCaps.categories
    max_session_products: int = FeatureCaps.session_products
    session_ttl: float = FeatureCaps.session_ttl
    max_raw_features: int = FeatureCaps.raw_features

    @classmethod
    def from_args(cls, args) -> "WorkerSettings":
        given = dict(vars(args))
        if given.get("challengers") is not None:
            given["challengers"] = tuple(given["challengers"])
        return cls(**{f.name: given[f.name] for f in fields(cls) if given.get(f.name) is not None})

    @property
    def promotion(self) -> Optional[PromotionPolicy]:
        if not self.auto_promote:
            return None
        return PromotionPolicy(margin=self.promotion_margin, min_resolved=self.promotion_min_resolved)

    @property
    def feature_caps(self) -> FeatureCaps:
        return feature_caps(self)

    @property
    def engine_options(self) -> dict:
        return {"window": self.window, "lateness": self.lateness, "metric_window": self.metric_window,
                "max_open": self.max_open, "drift_delta": self.drift_delta}

    @property
    def name(self) -> str:
        return self.client_id or f"{socket.gethostname()}-{os.getpid()}"


def feature_caps(config) -> FeatureCaps:
    """`FeatureCaps` from the --max-* options of a command (argparse namespace or settings)."""
    return FeatureCaps(sessions=config.max_sessions, users=config.max_users, products=config.max_products,
                       brands=config.max_brands, categories=config.max_categories,
                       session_products=config.max_session_products, session_ttl=config.session_ttl,
                       raw_features=config.max_raw_features)
