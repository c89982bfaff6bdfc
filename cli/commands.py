"""The `shopstream` command. Every option falls back to an environment variable
SHOPSTREAM_<OPTION> (e.g. --bootstrap-servers <- SHOPSTREAM_BOOTSTRAP_SERVERS), since
docker compose configures services by environment; a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

from shopstream import __version__
from shopstream.config import ConfigError, EngineConfig
from shopstream.features import FeatureCaps
from shopstream.lineup import Lineup

ENV_PREFIX = "SHOPSTREAM_"


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def _truthy(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def option(parser: argparse.ArgumentParser, flag: str, help: str, default=None, type=str,
           many: bool = False, switch: bool = False, choices=None, secret: bool = False) -> None:
    """Add --flag whose default comes from SHOPSTREAM_FLAG when set.

    `many`: several values (space-separated on the command line, comma-separated in env);
    `switch`: a boolean flag (env: 1/true/yes or 0/false/no); `secret`: never show the value."""
    env = env_name(flag)
    raw = os.environ.get(env)
    try:
        if raw is not None:
            if switch:
                default = _truthy(raw)
            elif many:
                default = [type(part.strip()) for part in raw.split(",") if part.strip()]
            else:
                default = type(raw)
    except ValueError as exc:
        parser.error(f"{env}={raw!r}: {exc}")
    hidden = secret or default in (None, False)
    shown = f"{help} [env {env}" + ("" if hidden else f", default {default}") + "]"
    if switch:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=bool(default), help=shown)
    else:
        parser.add_argument(flag, type=type, default=default, help=shown, choices=choices,
                            nargs="+" if many else None)


def add_options(parser: argparse.ArgumentParser, config_class, skip: tuple = ()) -> None:
    """One option per field of a frozen settings class that has ``help`` metadata: its name
    (or ``flag``), its default, type and choices come from the class, so each is written once."""
    from stream.settings import option_name

    for f in fields(config_class):
        meta = f.metadata
        if "help" not in meta or f.name in skip:
            continue
        flag = meta.get("flag") or "--" + option_name(config_class, f).replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            option(parser, flag, meta["help"], default=default, switch=True)
        elif isinstance(default, tuple):
            option(parser, flag, meta["help"], default=list(default), many=True)
        else:
            option(parser, flag, meta["help"], default=default, type=meta.get("type") or type(default),
                   choices=meta.get("choices"), secret=meta.get("secret", False))


def _add_kafka_options(parser):
    from stream.connection import KafkaConnection

    add_options(parser, KafkaConnection)


def _add_state_caps(parser):
    caps = FeatureCaps()
    option(parser, "--max-sessions", "sessions the features remember", default=caps.sessions, type=int)
    option(parser, "--max-users", "users the features remember", default=caps.users, type=int)
    option(parser, "--max-products", "products the features remember", default=caps.products, type=int)
    option(parser, "--max-brands", "brands the features remember", default=caps.brands, type=int)
    option(parser, "--max-categories", "categories with a price average", default=caps.categories, type=int)
    option(parser, "--max-session-products", "distinct products one session tracks", default=caps.session_products,
           type=int)
    option(parser, "--session-ttl", "seconds of event time a quiet session is remembered", default=caps.session_ttl,
           type=float)
    option(parser, "--max-raw-features", "distinct raw feature names a model sees", default=caps.raw_features,
           type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopstream", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"shopstream {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write a synthetic clickstream as JSON lines")
    option(generate, "--out", "output .jsonl file", default="events.jsonl")
    option(generate, "--events", "number of events", default=100_000, type=int)
    option(generate, "--seed", "random seed (same seed, same events)", default=7, type=int)
    option(generate, "--days", "time span in days", default=30.0, type=float)
    option(generate, "--drift", "drift scenario(s), e.g. checkout_incident@0.5-0.7:android price_shock@0.8",
           many=True, default=[])
    option(generate, "--max-user-share", "cap on one user's share of the sessions (1: uncapped, a skewed shop)",
           default=0.01, type=float)

    bootstrap = commands.add_parser("bootstrap", help="train and evaluate models on a history file")
    option(bootstrap, "--history", "history file: .jsonl, .csv (REES46) or .parquet")
    option(bootstrap, "--generate-events", "without --history: generate this many events as the history",
           default=0, type=int)
    option(bootstrap, "--seed", "generator seed (with --generate-events)", default=7, type=int)
    option(bootstrap, "--out", "artifacts directory", default="artifacts")
    option(bootstrap, "--model", "candidate models", many=True, default=["logreg", "logreg_adagrad", "hat"])
    option(bootstrap, "--holdout", "fraction of the history (by time) held out", default=0.2, type=float)
    option(bootstrap, "--columns", "column mapping OURS=THEIRS,... for other exports")
    option(bootstrap, "--max-bad-rows", "stop with an error after more bad rows than this (default: no limit, "
           "each is counted and skipped, the first ones listed in the report)", type=int)
    option(bootstrap, "--progress", "show a progress bar", switch=True, default=True)
    option(bootstrap, "--epochs", "mlp: most epochs of mini-batch training (early stopping may end sooner)",
           default=10, type=int)
    option(bootstrap, "--batch-size", "mlp: examples per mini-batch", default=32, type=int)
    option(bootstrap, "--patience", "mlp: epochs without a lower validation loss before stopping",
           default=3, type=int)
    option(bootstrap, "--learning-rate", "mlp: Adam learning rate, offline and then online (kept in the artifact)",
           default=1e-3, type=float)
    add_options(bootstrap, EngineConfig, skip=("drift_reaction",))

    demo = commands.add_parser("demo", help="the whole pipeline in-process: no Kafka, no setup")
    option(demo, "--out", "output directory", default="demo-out")
    option(demo, "--events", "events to generate", default=200_000, type=int)
    option(demo, "--seed", "random seed", default=7, type=int)
    option(demo, "--drift", "drift scenario", default="checkout_incident@0.5-0.65:web")
    option(demo, "--metrics-host", "metrics endpoint host", default="127.0.0.1")
    option(demo, "--metrics-port", "metrics endpoint port (0: any free port)", default=9108, type=int)
    option(demo, "--progress", "show a progress bar", switch=True, default=True)

    produce = commands.add_parser("produce", help="feed events from a file or the generator into Kafka")
    _add_kafka_options(produce)
    option(produce, "--topic", "events topic", default="shop-events")
    option(produce, "--file", "events file (.jsonl, .csv); without it, generate")
    option(produce, "--events", "events to generate when no file is given", default=100_000, type=int)
    option(produce, "--seed", "generator seed", default=7, type=int)
    option(produce, "--drift", "generator drift scenario(s)", many=True, default=[])
    option(produce, "--max-user-share", "generator: cap on one user's share of the sessions (1: uncapped)",
           default=0.01, type=float)
    option(produce, "--rate", "events per second (0: as fast as possible)", default=0.0, type=float)
    option(produce, "--validate", "drop and count invalid events instead of sending them", switch=True)
    option(produce, "--max-bad-rows", "with --validate: stop with an error after more bad rows than this "
           "(default: no limit, each is reported and skipped)", type=int)
    option(produce, "--progress", "show a progress bar", switch=True, default=True)

    topics = commands.add_parser("topics", help="create the events, predictions and dead-letter topics")
    _add_kafka_options(topics)
    option(topics, "--topic", "events topic", default="shop-events")
    option(topics, "--predictions-topic", "predictions topic", default="shop-predictions")
    option(topics, "--dead-letter-topic", "dead-letter topic", default="shop-events-dlq")
    option(topics, "--control-topic", "model lifecycle commands topic", default="shop-control")
    option(topics, "--partitions", "partitions of the events and predictions topics", default=4, type=int)

    models = commands.add_parser("models", help="list models; promote or roll back on running workers")
    models.add_argument("action", choices=["list", "promote", "rollback"])
    models.add_argument("target", nargs="?", help="model name (promote) or artifact version (rollback)")
    _add_kafka_options(models)
    option(models, "--control-topic", "topic the workers read commands from", default="shop-control")
    option(models, "--topic", "events topic (its partitions are the ones to hear from)", default="shop-events")
    option(models, "--artifacts", "bootstrap output: versions to list or roll back to")
    option(models, "--checkpoint-store", "where the workers keep checkpoints (list)", default="dir",
           choices=["dir", "kafka"])
    option(models, "--checkpoints", "checkpoint directory (list, with --checkpoint-store dir)")
    option(models, "--checkpoint-topic", "checkpoint topic (list, with --checkpoint-store kafka)",
           default="shopstream-checkpoints")
    option(models, "--group", "the workers' consumer group (list, with --checkpoint-store kafka)", default="shopstream")
    option(models, "--partition", "only this partition (default: all)", type=int)
    option(models, "--wait", "wait until every partition applied or rejected the command", switch=True, default=True)
    option(models, "--wait-timeout", "seconds to wait for the partitions' replies", default=30.0, type=float)

    worker = commands.add_parser("worker", help="consume events from Kafka, predict then learn on each")
    _add_kafka_options(worker)
    from stream.settings import CheckpointSettings, ServeSettings, WorkerSettings

    add_options(worker, WorkerSettings)
    add_options(worker, CheckpointSettings)
    add_options(worker, ServeSettings)
    add_options(worker, Lineup)
    add_options(worker, EngineConfig)
    _add_state_caps(worker)
    return parser


def _cmd_generate(args) -> int:
    from shopstream.generator import Drift, generate, write_jsonl

    drifts = tuple(Drift.parse(text) for text in args.drift)
    count = write_jsonl(generate(args.events, seed=args.seed, days=args.days, drifts=drifts,
                                 max_user_share=args.max_user_share), args.out)
    print(f"wrote {count} events to {args.out}")
    return 0


def _cmd_bootstrap(args) -> int:
    from offline.bootstrap import EpochSettings, bootstrap
    from shopstream.readers import parse_column_map

    if not args.history and args.generate_events > 0:
        from shopstream.generator import generate, write_jsonl

        Path(args.out).mkdir(parents=True, exist_ok=True)
        args.history = str(Path(args.out) / "generated-history.jsonl")
        write_jsonl(generate(args.generate_events, seed=args.seed), args.history)
        print(f"generated {args.generate_events} history events into {args.history}")
    if not args.history:
        raise ValueError("--history (or SHOPSTREAM_HISTORY) is required, or --generate-events N")
    config = EngineConfig.from_dict(vars(args))
    report = bootstrap(args.history, args.out, models=args.model, config=config,
                       holdout=args.holdout, columns=parse_column_map(args.columns), progress=args.progress,
                       epochs=EpochSettings(epochs=args.epochs, batch_size=args.batch_size, patience=args.patience,
                                            lr=args.learning_rate), max_bad_rows=args.max_bad_rows)
    data = report["data"]
    print(f"events: {data['events']} valid of {data['rows']} rows, {data['malformed']} malformed, "
          f"{data['duplicates']} duplicates")
    for name, candidate in report["candidates"].items():
        h = candidate["holdout"]
        print(f"{name:>13}: holdout roc_auc {h['roc_auc']:.4f}  f1 {h['f1']:.4f}  accuracy {h['accuracy']:.4f}"
              f"  log_loss {h['log_loss']:.4f}  (base rate {h['base_rate']:.3f}, {h['resolved']} resolved)")
    print(f"default: {report['default']}; report: {Path(args.out) / 'report.md'}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    summary = run_demo(args)
    print(json.dumps(summary, indent=2, default=float))
    return 0


def _cmd_produce(args) -> int:
    from stream.produce import produce

    return produce(args)


def _cmd_topics(args) -> int:
    from stream.topics import topics_command

    return topics_command(args)


def _cmd_models(args) -> int:
    from shopstream.signing import signing_key
    from stream.control_operator import models_command

    return models_command(args, signing_key())


def _cmd_worker(args) -> int:
    from stream.settings import WorkerSettings
    from stream.worker import run_worker

    return run_worker(WorkerSettings.from_args(args))


#: Settings a command checks before it does anything (the worker checks the rest in its preflight).
RANGES = {
    "events": (lambda v: v >= 0, "must be >= 0"),
    "days": (lambda v: v > 0, "must be > 0"),
    "rate": (lambda v: v >= 0, "must be >= 0 (0: as fast as possible)"),
    "partitions": (lambda v: 1 <= v <= 10_000, "must be 1..10000"),
    "holdout": (lambda v: 0 <= v < 1, "must be a fraction in [0, 1)"),
    "max_bad_rows": (lambda v: v is None or v >= 0, "must be >= 0"),
    "wait_timeout": (lambda v: v > 0, "must be > 0 seconds"),
    "generate_events": (lambda v: v >= 0, "must be >= 0"),
    "max_user_share": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
}


def check_ranges(args) -> None:
    """One clear line for a value out of range, before any work or any connection."""
    for name, (ok, rule) in RANGES.items():
        if hasattr(args, name) and not ok(getattr(args, name)):
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)!r} {rule}")


COMMANDS = {"generate": _cmd_generate, "bootstrap": _cmd_bootstrap, "demo": _cmd_demo,
            "produce": _cmd_produce, "topics": _cmd_topics, "models": _cmd_models, "worker": _cmd_worker}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from kafka.errors import KafkaError

    try:
        check_ranges(args)
        return COMMANDS[args.command](args)
    except ConfigError as exc:  # a settings object refused a value: name the option, not the field
        print(f"shopstream {args.command}: error: --{exc.name.replace('_', '-')} {exc.value!r} {exc.rule}",
              file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Expected user errors: one clear line, no traceback.
        print(f"shopstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:  # e.g. no broker: say which servers, not a client traceback
        servers = getattr(args, "bootstrap_servers", None)
        text = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
        print(f"shopstream {args.command}: error: Kafka at {servers}: {text} (is the broker up?)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
