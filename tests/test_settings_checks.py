"""Settings a worker refuses at start: topics it would feed itself through, and numbers with no
meaning (NaN, infinity, a negative promotion margin). Each is one line naming the option and the
rule, exit 2, before any connection; a property test tries many combinations."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from cli.commands import build_parser, main
from shopstream.config import ConfigError
from stream.settings import PARTS, WorkerSettings, option_name

#: Bounded and reproducible: the same examples on every machine, no per-example deadline.
BOUNDED = hsettings(max_examples=150, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

REFUSED = [
    (["--dead-letter-topic", "shop-events"], "--dead-letter-topic 'shop-events' must differ from --topic"),
    (["--predictions-topic", "shop-events"], "--predictions-topic 'shop-events' must differ from --topic"),
    (["--control-topic", "shop-events"], "--control-topic 'shop-events' must differ from --topic"),
    (["--predictions-topic", "dlq", "--dead-letter-topic", "dlq"],
     "--predictions-topic 'dlq' must differ from --dead-letter-topic"),
    (["--control-topic", "shop-predictions"], "--control-topic 'shop-predictions' must differ from "
                                              "--predictions-topic"),
    (["--topic", "shop-control-replies"], "--control-topic 'shop-control' must differ from --topic "
                                          "('shop-control-replies' would be both)"),
    (["--checkpoint-store", "kafka", "--checkpoint-topic", "shop-events"],
     "--checkpoint-topic 'shop-events' must differ from --topic"),
    (["--dead-letter-topic", ""], "--dead-letter-topic '' must be a topic name"),
    (["--checkpoint-store", "kafka", "--checkpoint-topic", ""], "--checkpoint-topic '' must be a topic name"),
    (["--topic", ""], "--topic '' must be a topic name"),
    (["--promotion-margin", "nan"], "--promotion-margin nan must be a finite number"),
    (["--promotion-margin", "-0.5"], "--promotion-margin -0.5 must be >= 0"),
    (["--promotion-min-resolved", "-3"], "--promotion-min-resolved -3 must be >= 1"),
    (["--window", "inf"], "--window inf must be a finite number"),
    (["--lateness", "inf"], "--lateness inf must be a finite number"),
    (["--checkpoint-seconds", "inf"], "--checkpoint-seconds inf must be a finite number"),
    (["--learning", "shared", "--learn-topic", "shop-events"], "--learn-topic 'shop-events' must differ from --topic"),
    (["--learning", "shared", "--learn-topic", "shop-predictions"],
     "--learn-topic 'shop-predictions' must differ from --predictions-topic"),
    (["--learning", "shared", "--checkpoint-store", "kafka", "--learn-topic", "shopstream-checkpoints"],
     "--checkpoint-topic 'shopstream-checkpoints' must differ from --learn-topic"),
    (["--learning", "shared", "--learn-topic", ""], "--learn-topic '' must be a topic name"),
]

#: Values from the environment are held to an option's choices as the command line's are (argparse
#: checks only what it parses; SHOPSTREAM_LOG_LEVEL=debug got as far as a TypeError in logging).
ENVIRONMENT_REFUSED = [
    ("SHOPSTREAM_LOG_LEVEL", "debug", "must be one of DEBUG, INFO, WARNING, ERROR"),
    ("SHOPSTREAM_CHECKPOINT_STORE", "Kafka", "must be one of dir, kafka"),
    ("SHOPSTREAM_PREDICTION_FORMAT", "Batch", "must be one of"),
]


@pytest.mark.parametrize("variable, value, line", ENVIRONMENT_REFUSED, ids=[v for v, _, _ in ENVIRONMENT_REFUSED])
def test_a_setting_from_the_environment_outside_its_choices_is_refused_naming_the_variable(variable, value, line,
                                                                                           capsys, monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("SHOPSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        main(["worker", "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "-1"])
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 2 and f"error: {variable}={value!r}: {line}" in printed, printed


@pytest.mark.parametrize("argv, line", REFUSED, ids=[" ".join(a) or "empty" for a, _ in REFUSED])
def test_a_setting_that_cannot_work_is_refused_with_one_line_before_any_connection(argv, line, capsys,
                                                                                  monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("SHOPSTREAM_"):
            monkeypatch.delenv(name)
    # Port 1: a worker that got past its settings would fail on the connection, with another line.
    code = main(["worker", "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "-1", *argv])
    [printed] = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and printed.startswith(f"shopstream worker: error: {line}"), printed


def test_topics_that_differ_and_disabled_outputs_are_accepted():
    settings = WorkerSettings.from_options(topic="a", dead_letter_topic="b", predictions_topic="", control_topic="")
    assert (settings.predictions_topic, settings.control_topic) == ("", "")
    WorkerSettings.from_options(checkpoint_store="dir", checkpoint_topic="a")  # unused by the directory store


def _float_options() -> list[str]:
    found = []
    for part in [*PARTS.values(), WorkerSettings]:
        for f in fields(part):
            if f.name not in PARTS and isinstance(f.default, float):
                found.append(option_name(part, f) if part is not WorkerSettings else f.name)
    return found


FLOATS = _float_options()
NAMES = st.sampled_from(["shop-events", "shop-events-dlq", "shop-predictions", "shop-control",
                         "shop-control-replies", "ckpt", "ckpt-chunks", "x", ""])


@BOUNDED
@given(values=st.dictionaries(st.sampled_from(FLOATS), st.floats(allow_nan=True, allow_infinity=True),
                              max_size=4),
       topics=st.fixed_dictionaries({"topic": NAMES, "dead_letter_topic": NAMES, "predictions_topic": NAMES,
                                     "control_topic": NAMES, "checkpoint_topic": NAMES}),
       store=st.sampled_from(["dir", "kafka"]))
@example(values={}, topics={"topic": "a", "dead_letter_topic": "b", "predictions_topic": "", "control_topic": "",
                            "checkpoint_topic": ""}, store="kafka")   # found by this test: was accepted
def test_settings_either_work_or_are_refused_naming_an_option(values, topics, store):
    """Whatever the values: accepted settings hold only finite numbers and topics that are all
    different; refused ones raise ConfigError naming an option the command line has."""
    options = {**values, **topics, "checkpoint_store": store}
    try:
        settings = WorkerSettings.from_options(**options)
    except ConfigError as exc:
        assert exc.name in OPTIONS, exc
        return
    for part in [*PARTS, None]:
        obj = getattr(settings, part) if part else settings
        for f in fields(obj):
            value = getattr(obj, f.name)
            assert not isinstance(value, float) or math.isfinite(value), (f.name, value)
    used = [settings.topic, settings.dead_letter_topic]
    used += [settings.predictions_topic] if settings.predictions_topic else []
    used += [settings.control_topic, settings.control_topic + "-replies"] if settings.control_topic else []
    if store == "kafka":
        used += [settings.checkpoints.topic, settings.checkpoints.topic + "-chunks"]
    assert all(used) and len(set(used)) == len(used), used


OPTIONS = {action.dest for action in build_parser()._subparsers._group_actions[0].choices["worker"]._actions}
