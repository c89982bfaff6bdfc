"""The `shopstream` command. Every option falls back to an environment variable
SHOPSTREAM_<OPTION> (e.g. --bootstrap-servers <- SHOPSTREAM_BOOTSTRAP_SERVERS), since
docker compose configures services by environment; a flag on the command line wins.

Each command's options are derived from its settings class (`COMMAND_SETTINGS`, see
`shopstream.options`), and each command is handed the object built from them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from offline.settings import BootstrapSettings
from shopstream import __version__
from shopstream.config import ConfigError, GenerateSettings
from shopstream.options import Settings, add_options, refuse_typed_secrets
from stream.settings import MODEL_ACTIONS, ModelsSettings, ProduceSettings, TopicsSettings, WorkerSettings

from .demo import DemoSettings

#: command -> its settings class and its help: each command's options are derived from its class.
COMMAND_SETTINGS: dict[str, tuple[type[Settings], str]] = {
    "generate": (GenerateSettings, "write a synthetic clickstream as JSON lines"),
    "bootstrap": (BootstrapSettings, "train and evaluate models on a history file"),
    "demo": (DemoSettings, "the whole pipeline in-process: no Kafka, no setup"),
    "produce": (ProduceSettings, "feed events from a file or the generator into Kafka"),
    "topics": (TopicsSettings, "create the events, predictions and dead-letter topics"),
    "models": (ModelsSettings, "list models; promote or roll back on running workers"),
    "worker": (WorkerSettings, "consume events from Kafka, predict then learn on each"),
}


class VersionAction(argparse.Action):
    """--version: the release and whether the engine runs compiled (imported only when asked)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and whether the engine runs compiled, then exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from shopstream.compiled import describe

        parser.exit(message=f"shopstream {__version__}\nengine: {describe()}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopstream", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", required=True)
    for command, (settings_class, text) in COMMAND_SETTINGS.items():
        sub = commands.add_parser(command, help=text)
        if command == "models":  # its two positionals, fields of ModelsSettings without options
            sub.add_argument("action", choices=MODEL_ACTIONS)
            sub.add_argument("target", nargs="?", help="model name (promote) or artifact version (rollback)")
        add_options(sub, settings_class)
    return parser


def settings_of(args: argparse.Namespace) -> Settings:
    """The command's settings object from its parsed options (and the environment's secrets)."""
    return COMMAND_SETTINGS[args.command][0].from_args(args)


def _cmd_generate(s: GenerateSettings) -> int:
    from shopstream.generator import write_jsonl

    count = write_jsonl(s.generator.generate(), s.out)
    print(f"wrote {count} events to {s.out}")
    return 0


def _cmd_bootstrap(s: BootstrapSettings) -> int:
    from offline.bootstrap import bootstrap, check_history, locked_output
    from offline.report import metric_text
    from shopstream.generator import generate, write_jsonl
    from shopstream.readers import parse_column_map

    columns = parse_column_map(s.columns)
    if s.history:
        check_history(s.history)   # before any work: not a file (a directory, a FIFO) fails now
    with locked_output(s.out) as out:   # --out is, or is made, a directory: refused now, not after training
        history = s.history
        if not history:  # the settings require --history or --generate-events
            history = str(out / "generated-history.jsonl")
            write_jsonl(generate(s.generate_events, seed=s.seed), history)
            print(f"generated {s.generate_events} history events into {history}")
        report = bootstrap(history, out, models=s.model, config=s.engine, holdout=s.holdout, columns=columns,
                           progress=s.progress, epochs=s.epochs, max_bad_rows=s.max_bad_rows,
                           signing_key=s.signing_key, lock=False)   # held here
    data = report["data"]
    print(f"events: {data['events']} valid of {data['rows']} rows, {data['malformed']} malformed, "
          f"{data['duplicates']} duplicates")
    for name, candidate in report["candidates"].items():
        h = candidate["holdout"]
        shown = {m: metric_text(h, m) for m in ("roc_auc", "f1", "accuracy", "log_loss")}
        print(f"{name:>13}: holdout roc_auc {shown['roc_auc']}  f1 {shown['f1']}  accuracy {shown['accuracy']}"
              f"  log_loss {shown['log_loss']}  (base rate {h['base_rate']:.3f}, {h['resolved']} resolved)")
        refused, learn_errors = sum(candidate["refused_events"].values()), candidate["learn_errors"]
        if refused or learn_errors:   # what a worker would dead-letter, or fail to learn: the report says why
            print(f"{'':>13}  {refused} events the engine refused, {learn_errors} learn errors (see the report)")
    print(f"default: {report['default']}; report: {Path(s.out) / 'report.md'}")
    return 0


def _cmd_demo(s: DemoSettings) -> int:
    from .demo import run_demo

    summary = run_demo(s)
    print(json.dumps(summary, indent=2, default=float))
    return 0


def _cmd_produce(s: ProduceSettings) -> int:
    from stream.produce import produce

    return produce(s)


def _cmd_topics(s: TopicsSettings) -> int:
    from stream.topics import topics_command

    return topics_command(s)


def _cmd_models(s: ModelsSettings) -> int:
    from stream.control_operator import models_command

    return models_command(s)


def _cmd_worker(s: WorkerSettings) -> int:
    from stream.worker import run_worker

    return run_worker(s)


COMMANDS: dict[str, Callable[[Any], int]] = {"generate": _cmd_generate, "bootstrap": _cmd_bootstrap, "demo": _cmd_demo,
            "produce": _cmd_produce, "topics": _cmd_topics, "models": _cmd_models, "worker": _cmd_worker}


def main(argv=None) -> int:
    parser = build_parser()
    typed_secret = refuse_typed_secrets(sys.argv[1:] if argv is None else list(argv))
    if typed_secret is not None:
        parser.error(typed_secret)
    args = parser.parse_args(argv)
    from kafka.errors import KafkaError

    try:
        settings = settings_of(args)  # every value checked by the object that owns it
        return COMMANDS[args.command](settings)
    except ConfigError as exc:  # a settings object refused a value: named as the option is typed
        print(f"shopstream {args.command}: error: {exc.typed}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:
        # Expected user errors: one clear line, no traceback.
        print(f"shopstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be read or written: which one, and why
        text = f"{exc.filename}: {exc.strerror}" if exc.filename is not None and exc.strerror else str(exc)
        print(f"shopstream {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KafkaError as exc:  # e.g. no broker: say which servers, not a client traceback
        servers = getattr(args, "bootstrap_servers", None)
        text = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
        # a timeout or a lost connection asks after the broker; a refused record or right does not
        hint = " (is the broker up?)" if exc.retriable else ""
        print(f"shopstream {args.command}: error: Kafka at {servers}: {text}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
