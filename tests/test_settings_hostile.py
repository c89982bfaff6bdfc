"""Hostile settings refused at start, one line naming the option and the rule, before any
connection: an empty listening host (every interface, unasked), bootstrap servers that are no
HOST:PORT list, SASL / SSL settings the protocol would drop or that cannot work, topic names Kafka
refuses only once connected, a generator span that overflows and a produce rate whose pause did.
In-process and quick (the fast lane: no marker needed, tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

from cli.commands import main
from shopstream.config import ConfigError, GeneratorSettings
from stream import produce as produce_module
from stream.connection import KafkaConnection, Secret, kafka_options
from stream.settings import ModelsSettings, ProduceSettings, ServeSettings, TopicsSettings, WorkerSettings

#: A worker that got past its settings would fail on this connection, with another line.
WORKER = ["worker", "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "-1"]


@pytest.fixture(autouse=True)
def no_shopstream_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SHOPSTREAM_"):
            monkeypatch.delenv(name)


def refused_line(argv, capsys) -> str:
    """The one line a command prints when it refuses `argv` (exit 2)."""
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, lines)
    return lines[0]


# -- 1. a listening host must name an address ------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--serve-host", "--metrics-host"])
@pytest.mark.parametrize("host", ["", "   "])
def test_an_empty_listening_host_is_refused_not_taken_for_every_interface(flag, host, capsys):
    line = refused_line([*WORKER, flag, host], capsys)
    assert line == (f"shopstream worker: error: {flag} {host!r} must name an address (0.0.0.0 for every "
                    "interface, on purpose)"), line


@pytest.mark.parametrize("variable", ["SHOPSTREAM_SERVE_HOST", "SHOPSTREAM_METRICS_HOST"])
def test_an_empty_listening_host_from_the_environment_is_refused(variable, monkeypatch, capsys):
    monkeypatch.setenv(variable, "")
    flag = "--" + variable.removeprefix("SHOPSTREAM_").lower().replace("_", "-")
    line = refused_line(WORKER, capsys)
    assert line.startswith(f"shopstream worker: error: {flag} '' must name an address"), line


def test_the_settings_objects_refuse_an_empty_host_themselves_and_take_every_interface_when_named():
    with pytest.raises(ConfigError, match=r"^host '' must name an address \(0.0.0.0 for every interface"):
        ServeSettings(host="")
    with pytest.raises(ConfigError, match=r"^metrics_host ' 127.0.0.1' must name an address"):
        WorkerSettings(metrics_host=" 127.0.0.1")
    settings = WorkerSettings.from_options(serve_host="0.0.0.0", metrics_host="0.0.0.0")
    assert (settings.serve.host, settings.metrics_host) == ("0.0.0.0", "0.0.0.0")


# -- 2. bootstrap servers: HOST:PORT, each ---------------------------------------------------------------------------

BAD_SERVERS = [
    ("127.0.0.1:99999", "has port 99999, outside 1..65535"),   # kafka-python connected to port 34463
    ("127.0.0.1:0", "has port 0, outside 1..65535"),            # retried without end
    ("127.0.0.1:-5", "must be HOST:PORT"),
    ("127.0.0.1:abc", "must be HOST:PORT"),                     # "invalid literal for int()", no option named
    (",", "has an empty item"),
    ("a:9092,", "has an empty item"),
    ("a:9092,b:70000", "has 'b:70000', which has port 70000, outside 1..65535"),
    ("a:9092, b", "has 'b', which is not HOST:PORT"),
    ("kafka 1:9092", "must be HOST:PORT"),
    ("[zz]:9092", "has 'zz' in brackets, which is no IPv6 address"),
    ("::1:9092", "must be HOST:PORT"),                          # kafka-python: IPv6 ::1:9092 on port 9092
    ("127.0.0.1:" + "9" * 5000, "outside 1..65535"),            # no int() of 5000 digits
]


@pytest.mark.parametrize("servers, why", BAD_SERVERS, ids=[s[:20] for s, _ in BAD_SERVERS])
def test_bootstrap_servers_that_are_no_host_port_list_are_refused_naming_the_option(servers, why):
    with pytest.raises(ConfigError) as refused:
        KafkaConnection(bootstrap_servers=servers)
    assert refused.value.name == "bootstrap_servers" and why in refused.value.rule, refused.value


@pytest.mark.parametrize("command", [["worker", "--metrics-port", "-1"], ["produce", "--events", "1"], ["topics"],
                                     ["models", "promote", "logreg"]])
@pytest.mark.parametrize("servers", ["127.0.0.1:99999", "", ","])
def test_every_command_that_connects_refuses_bad_or_no_bootstrap_servers_in_one_line(command, servers, capsys):
    line = refused_line([*command, "--bootstrap-servers", servers], capsys)
    assert line.startswith(f"shopstream {command[0]}: error: --bootstrap-servers {servers!r} "), line
    assert ("must name a broker" if servers == "" else "1..65535" if servers[-1] == "9" else "empty item") in line


def test_good_bootstrap_servers_pass_as_before_and_models_list_needs_none():
    assert kafka_options(KafkaConnection(bootstrap_servers="a:9092, [::1]:9093,kafka-1.example:19092"))[
        "bootstrap_servers"] == ["a:9092", "[::1]:9093", "kafka-1.example:19092"]
    assert ModelsSettings.from_options(bootstrap_servers="").kafka.bootstrap_servers == ""   # artifacts only
    with pytest.raises(ConfigError, match="^bootstrap_servers '' must name a broker"):
        ModelsSettings.from_options(bootstrap_servers="", checkpoint_store="kafka")   # reads a topic
    for cls in (WorkerSettings, ProduceSettings, TopicsSettings):
        with pytest.raises(ConfigError, match="^bootstrap_servers '' must name a broker"):
            cls.from_options(bootstrap_servers="")


# -- 3. SASL and SSL: nothing dropped, nothing empty, files readable -------------------------------------------------

def test_an_empty_secret_is_false_and_an_empty_sasl_password_is_refused_never_shown():
    assert not Secret("") and Secret("x")
    for password in ("", Secret("")):
        with pytest.raises(ConfigError) as refused:
            KafkaConnection(security_protocol="SASL_SSL", sasl_username="u", sasl_password=password)
        assert str(refused.value).startswith("sasl_password is required by SASL_SSL and must not be empty")
    with pytest.raises(ConfigError, match="^sasl_password is required by SASL_PLAINTEXT"):
        KafkaConnection(security_protocol="SASL_PLAINTEXT", sasl_username="u")
    with pytest.raises(ConfigError, match="^sasl_username is required by SASL_SSL"):
        KafkaConnection(security_protocol="SASL_SSL", sasl_password="p")


def test_an_empty_sasl_password_from_the_environment_is_refused_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("SHOPSTREAM_SASL_PASSWORD", "")
    line = refused_line([*WORKER, "--security-protocol", "SASL_SSL", "--sasl-username", "u"], capsys)
    assert line.startswith("shopstream worker: error: --sasl-password is required by SASL_SSL and must not be "
                           "empty"), line


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
@pytest.mark.parametrize("name", ["sasl_username", "sasl_password"])
def test_a_sasl_setting_the_protocol_would_drop_is_refused(protocol, name):
    with pytest.raises(ConfigError) as refused:
        KafkaConnection(security_protocol=protocol, **{name: "hunter2"})
    text = str(refused.value)
    assert text.startswith(name) and f"is set but security_protocol is {protocol}" in text, text
    assert name == "sasl_username" or "hunter2" not in text   # the password never shown


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
@pytest.mark.parametrize("name", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
def test_an_ssl_setting_the_protocol_would_drop_is_refused(protocol, name, tmp_path):
    pem = tmp_path / "x.pem"
    pem.write_text("pem")
    sasl = {"sasl_username": "u", "sasl_password": "p"} if protocol.startswith("SASL") else {}
    with pytest.raises(ConfigError, match=f"^{name} '{pem}' is set but security_protocol is {protocol}"):
        KafkaConnection(security_protocol=protocol, **sasl, **{name: str(pem)})


def test_a_sasl_setting_on_the_command_line_with_plaintext_is_one_line(capsys):
    line = refused_line([*WORKER, "--sasl-username", "shop"], capsys)
    assert line.startswith("shopstream worker: error: --sasl-username 'shop' is set but security_protocol is "
                           "PLAINTEXT"), line


def test_an_ssl_file_that_cannot_be_read_is_refused_at_start_naming_the_file(tmp_path, capsys):
    missing, folder, fifo = tmp_path / "missing.pem", tmp_path / "folder", tmp_path / "fifo.pem"
    folder.mkdir()
    os.mkfifo(fifo)
    for name, path, why in [("ssl_cafile", missing, "cannot be read: No such file or directory"),
                            ("ssl_certfile", folder, "is not a regular file"),
                            ("ssl_keyfile", fifo, "is not a regular file")]:   # refused, never opened (it blocks)
        for cls in (WorkerSettings, ProduceSettings, TopicsSettings, ModelsSettings):
            with pytest.raises(ConfigError) as refused:
                cls.from_options(security_protocol="SSL", **{name: str(path)})
            assert (refused.value.name, refused.value.value) == (name, str(path)), refused.value
            assert why in refused.value.rule, refused.value
    line = refused_line([*WORKER, "--security-protocol", "SSL", "--ssl-cafile", str(missing)], capsys)
    assert line == f"shopstream worker: error: --ssl-cafile '{missing}' cannot be read: No such file or directory"
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert WorkerSettings.from_options(security_protocol="SSL", ssl_cafile=str(ca)).kafka.ssl_cafile == str(ca)


# -- 4. topic names Kafka takes --------------------------------------------------------------------------------------

BAD_TOPICS = [
    (["--topic", "bad topic!"], "--topic 'bad topic!' must be a topic name: 1..249 of A-Z a-z 0-9 . _ -"),
    (["--topic", "."], "--topic '.' must be a topic name"),
    (["--dead-letter-topic", ".."], "--dead-letter-topic '..' must be a topic name"),
    (["--predictions-topic", "p/q"], "--predictions-topic 'p/q' must be a topic name"),
    (["--topic", "t" * 250], f"--topic '{'t' * 250}' must be a topic name of at most 249 characters, not 250"),
    # the worker also reads and writes "<control>-replies" and "<checkpoint>-chunks"
    (["--control-topic", "c" * 242], "must be a topic name of at most 241 characters, not 242"),
    (["--checkpoint-store", "kafka", "--checkpoint-topic", "k" * 243],
     "must be a topic name of at most 242 characters, not 243"),
    (["--learning", "shared", "--learn-topic", "learn:x"], "--learn-topic 'learn:x' must be a topic name"),
]


@pytest.mark.parametrize("argv, line", BAD_TOPICS, ids=[" ".join(a)[:40] for a, _ in BAD_TOPICS])
def test_a_topic_name_kafka_would_refuse_is_refused_by_the_worker_first(argv, line, capsys):
    printed = refused_line([*WORKER, *argv], capsys)
    assert printed.startswith("shopstream worker: error: --") and line in printed, printed


@pytest.mark.parametrize("argv", [["produce", "--topic", "bad topic!"], ["topics", "--topic", ".."],
                                  ["topics", "--control-topic", "c" * 242], ["models", "promote", "logreg",
                                                                             "--control-topic", "c!"],
                                  ["models", "list", "--checkpoint-store", "kafka", "--checkpoint-topic", "k" * 243]])
def test_the_other_commands_refuse_such_topic_names_too(argv, capsys):
    printed = refused_line([*argv, "--bootstrap-servers", "127.0.0.1:1"], capsys)
    assert f"shopstream {argv[0]}: error: {argv[-2]} " in printed and "must be a topic name" in printed, printed


def test_the_longest_legal_names_are_accepted():
    settings = WorkerSettings.from_options(topic="t" * 249, control_topic="c" * 241, checkpoint_store="kafka",
                                           checkpoint_topic="k" * 242, dead_letter_topic="A.b_c-9")
    assert len(settings.topic) == 249
    topics = TopicsSettings.from_options(topic="t" * 249, control_topic="c" * 241, predictions_topic="")
    assert (len(topics.topic), topics.predictions_topic) == (249, "")   # '' disables, as before
    assert ProduceSettings.from_options(topic="a.B_c-9").topic == "a.B_c-9"


# -- 5. the generator's span ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("days", [float("inf"), 1e300, 36_501.0, float("nan"), 0.0, -1.0])
def test_a_generator_span_out_of_range_is_refused(days):
    with pytest.raises(ConfigError, match=r"^days .* must be > 0 and at most 36500"):
        GeneratorSettings(days=days)


def test_generate_days_1e309_is_one_line_not_an_overflow_traceback(capsys, tmp_path):
    line = refused_line(["generate", "--days", "1e309", "--events", "10", "--out", str(tmp_path / "e.jsonl")],
                        capsys)
    assert line == "shopstream generate: error: --days inf must be > 0 and at most 36500 (a century)", line
    assert GeneratorSettings(days=36_500).days == 36_500


# -- 6. a slow produce rate pauses in bounded steps --------------------------------------------------------------------

class _Clock:
    """time.monotonic and time.sleep of a fake clock; stops the send after `limit` sleeps."""

    def __init__(self, limit: int):
        self.now, self.sleeps, self.limit = 1000.0, [], limit

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert 0 < seconds <= 3600, seconds   # time.sleep(1e10) raised OverflowError
        self.sleeps.append(seconds)
        self.now += seconds
        if len(self.sleeps) >= self.limit:
            raise KeyboardInterrupt   # enough: the pause would go on in bounded steps


class _Producer:
    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None):
        self.sent.append(value)

    def flush(self):
        pass


@pytest.mark.parametrize("rate", [1e-10, 1e-310])
def test_a_very_slow_rate_sends_and_waits_in_bounded_steps_without_overflow(rate, monkeypatch):
    clock = _Clock(limit=5)
    monkeypatch.setattr(produce_module, "time", clock)
    producer = _Producer()
    with pytest.raises(KeyboardInterrupt):
        produce_module.send_all(producer, "t", [(b"k", b"1"), (b"k", b"2")], rate=rate)
    assert producer.sent == [b"1"] and clock.sleeps == [3600.0] * 5


def test_a_slow_legitimate_rate_still_paces_exactly(monkeypatch):
    clock = _Clock(limit=10_000)
    monkeypatch.setattr(produce_module, "time", clock)
    producer = _Producer()
    assert produce_module.send_all(producer, "t", [(b"k", b"%d" % i) for i in range(3)], rate=1 / 8192) == 3
    assert clock.sleeps == [3600.0, 3600.0, 992.0] * 3 and clock.now == 1000.0 + 3 * 8192


def test_the_demo_refuses_an_empty_metrics_host_too(capsys):
    from cli.commands import main

    assert main(["demo", "--metrics-host", ""]) == 2
    assert capsys.readouterr().err.strip() == ("shopstream demo: error: --metrics-host '' must name an address "
                                               "(0.0.0.0 for every interface, on purpose)")
