#!/usr/bin/env python3
"""The peers phase: the same River job on the same pre-filled topic, by every system a user
choosing a stack would try, in one run.

    python benchmarks/peers.py [--events 100000] [--only river,shopstream,...] [--json out.json]

The job: 100,000 labelled events with 12 raw numeric features (`common.make_raw_messages`) in
one 1-partition topic on the local broker; per event, River's `StandardScaler |
LogisticRegression` (the catalog's `logreg`) `predict_proba_one`, Accuracy + Recall + F1
updated, `learn_one`, and the prediction published to a fresh output topic.

Throughput is read from the output topic: each output record's CreateTime and the last
source offset it covers; events/s = (offsets covered) / (time) from the first record that
covers 5% of the offsets to the last record (a batch is stamped when it is published, so
the first batch's own time is not measurable). Start-up, group joins and the idle wait at
the end are outside; everything a system does per event is inside.
River's own loop has no Kafka: the same calls on the decoded (x, y), best of 3 passes.

Each system runs as its own child process (`--child NAME`), one after the other. The
peers' packages (confluent-kafka, quixstreams, bytewax) are in the `bench` extra only.

`--rounds N` runs every system N times, in order on even rounds and in reverse on odd ones (so
a machine whose load drifts favours none), and reports each system's median; `--paired A,B`
prints A's events/s over B's in each round (ratios within one round, where the two ran
minutes apart), how many rounds A was ahead, and the median ratio. On this 2-core machine one
run's ratios move by several percent: a difference smaller than that needs rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BOOTSTRAP, ROOT, Topics, prefill, read_all, worker_command, worker_env  # noqa: E402

SYSTEMS = ("river", "shopstream", "shopstream_confluent", "shopstream_event", "kafka_python", "confluent_kafka",
           "quix_alo", "quix_eos", "bytewax")
DESCRIPTIONS = {
    "river": "River's loop in process (the ceiling): the model and metric calls on decoded (x, y)",
    "shopstream": "shopstream worker `--model logreg --features raw`, predictions batched (default)",
    "shopstream_confluent": "shopstream worker `--kafka-client confluent` (librdkafka data path), batched",
    "shopstream_event": "shopstream worker, `--prediction-format event` (one record per prediction)",
    "kafka_python": "a plain kafka-python loop (poll -> River -> send)",
    "confluent_kafka": "a plain confluent-kafka loop (consume -> River -> produce)",
    "quix_alo": "Quix Streams, at-least-once (Application -> apply -> to_topic)",
    "quix_eos": "Quix Streams, exactly-once",
    "bytewax": "Bytewax, KafkaSource -> map -> KafkaSink (one worker)",
}
FEATURES = 12


def river_step():
    """The job's per-event work, as every peer does it: decode, predict, score, learn, encode."""
    import msgspec
    from river import metrics

    from shopstream.models import build_model

    model = build_model("logreg")
    metric = metrics.Accuracy() + metrics.Recall() + metrics.F1()
    decode, encode = msgspec.json.decode, msgspec.json.encode

    def step(value: bytes, offset: int) -> bytes:
        event = decode(value)
        x, y = event["features"], event["label"]
        proba = model.predict_proba_one(x)
        metric.update(y, max(proba, key=proba.get))
        model.learn_one(x, y)
        return encode({"offset": offset, "score": proba.get(True, 0.0)})

    return step


# -- children: one system each ------------------------------------------------------------------

def child_kafka_python(topic: str, out: str, events: int) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    step = river_step()
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, group_id=None)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5, acks="all")
    done = 0
    while done < events:
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                producer.send(out, value=step(record.value, record.offset))
                done += 1
    producer.flush()
    producer.close()
    consumer.close()


def child_confluent_kafka(topic: str, out: str, events: int) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    step = river_step()
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"peers-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5, "acks": "all"})
    done = 0
    while done < events:
        for message in consumer.consume(num_messages=1000, timeout=0.2):
            if message.error():
                raise RuntimeError(message.error())
            value = step(message.value(), message.offset())
            while True:
                try:
                    producer.produce(out, value)
                    break
                except BufferError:   # the local queue is full: let the IO thread drain it
                    producer.poll(0.01)
            done += 1
        producer.poll(0)
    producer.flush()
    consumer.close()


def child_quix(topic: str, out: str, events: int, guarantee: str) -> None:
    from quixstreams import Application, message_context

    step = river_step()
    app = Application(broker_address=BOOTSTRAP, consumer_group=f"peers-{uuid.uuid4().hex[:8]}",
                      auto_offset_reset="earliest", processing_guarantee=guarantee, loglevel="WARNING",
                      state_dir=f"/tmp/peers-quix-{os.getpid()}", use_changelog_topics=False)
    source = app.topic(topic, value_deserializer="bytes")
    sink = app.topic(out, value_serializer="bytes")
    sdf = app.dataframe(source)
    sdf = sdf.apply(lambda value: step(value, message_context().offset))
    # Quix forwards the input's timestamp by default: stamp the output when it is produced, as the others do.
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: int(time.time() * 1000))
    sdf.to_topic(sink)
    app.run(count=events, collect=False, timeout=600)


def child_bytewax(topic: str, out: str, events: int) -> None:
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    step = river_step()
    flow = Dataflow("peers")
    messages = op.input("in", flow, KafkaSource([BOOTSTRAP], [topic], tail=False))
    outputs = op.map("river", messages, lambda m: KafkaSinkMessage(None, step(m.value, m.offset)))
    op.output("out", outputs, KafkaSink([BOOTSTRAP], out))
    run_main(flow)


CHILDREN = {"kafka_python": child_kafka_python, "confluent_kafka": child_confluent_kafka,
            "quix_alo": lambda t, o, n: child_quix(t, o, n, "at-least-once"),
            "quix_eos": lambda t, o, n: child_quix(t, o, n, "exactly-once"), "bytewax": child_bytewax}


# -- the parent -----------------------------------------------------------------------------------

def last_offsets(records) -> list[tuple[int, int]]:
    """(CreateTime ms, last source offset covered) of each output record, in time order."""
    from stream.outputs import FORMAT_HEADER, decode_predictions

    out = []
    for r in records:
        if any(k == FORMAT_HEADER for k, _ in r.headers or ()) or b'"partition"' in r.value[:400]:
            offset = max(p.offset for p in decode_predictions(r))
        else:
            offset = json.loads(r.value)["offset"]
        out.append((r.timestamp, offset))
    out.sort()
    return out


def rate(records, skip: float = 0.05) -> dict:
    """Events/s from the record that first covers `skip` of the offsets to the last record:
    a system that processes a batch before publishing it (Bytewax, our batched worker)
    stamps a whole batch at once, so the first records' times are not when their events began."""
    stamps = last_offsets(records)
    low, high = stamps[0][1], max(offset for _, offset in stamps)
    start = next(s for s in stamps if s[1] >= low + skip * (high - low))
    end = max(s for s in stamps if s[1] == high)
    span = (end[0] - start[0]) / 1000.0
    return {"records": len(records), "events_measured": end[1] - start[1], "span_s": span,
            "events_per_s": (end[1] - start[1]) / span if span > 0 else float("nan")}


def river_in_process(messages, passes: int = 3) -> dict:
    import msgspec
    from river import metrics

    from shopstream.models import build_model

    pairs = [(e["features"], e["label"]) for e in (msgspec.json.decode(v) for _, v in messages)]
    best = None
    for _ in range(passes):
        model, metric = build_model("logreg"), metrics.Accuracy() + metrics.Recall() + metrics.F1()
        started = time.perf_counter()
        for x, y in pairs:
            proba = model.predict_proba_one(x)
            metric.update(y, max(proba, key=proba.get))
            model.learn_one(x, y)
        seconds = time.perf_counter() - started
        best = seconds if best is None else min(best, seconds)
    return {"events_measured": len(pairs), "span_s": best, "events_per_s": len(pairs) / best}


def run_system(name: str, topic: str, topics: Topics, events: int, workdir: Path) -> dict:
    out = topics.new(f"peer-{name.replace('_', '')}")
    started = time.perf_counter()
    if name.startswith("shopstream"):
        extra = ["--model", "logreg", "--features", "raw", "--predictions-topic", out, "--metrics-port", "0",
                 "--until-idle", "5", "--client-id", f"peers-{name}"]
        if name == "shopstream_event":
            extra += ["--prediction-format", "event"]
        if name == "shopstream_confluent":
            extra += ["--kafka-client", "confluent"]
        group = f"g-{out}"
        command = worker_command(topic, group, workdir / f"{out}-ckpt", *extra)
        env = worker_env()
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--topic", topic, "--out", out,
                   "--events", str(events)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
    cpu_before = _children_cpu()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    records = read_all(out)
    result = rate(records)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    # CPU seconds of the whole process (every thread; start-up, join and the idle wait included): on a shared
    # machine it moves far less with the load than events/s does.
    result["cpu_s"] = round(_children_cpu() - cpu_before, 2)
    return result


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_peers(events: int, systems=SYSTEMS, workdir: Path | None = None, rounds: int = 1) -> dict:
    """Each system's figures ({name: {...}}); with `rounds` > 1, the median round's, and
    ``runs``: its events/s in every round, in round order (see the module's docstring)."""
    from common import make_raw_messages, say

    workdir = workdir or Path(f"/tmp/peers-{uuid.uuid4().hex[:8]}")
    workdir.mkdir(parents=True, exist_ok=True)
    messages = make_raw_messages(events, width=FEATURES)
    results: dict = {"events": events, "features": FEATURES, "rounds": rounds,
                     "load_before": round(os.getloadavg()[0], 2)}
    runs: dict = {name: [] for name in systems}
    topics = Topics()
    try:
        topic = topics.new("peers", 1)
        for suffix in ("-dlq", "-control"):   # the workers' own topics, created up front
            topics.new("", 1, name=f"{topic}{suffix}")
        prefill(topic, messages)
        for round_ in range(rounds):
            for name in round_order(systems, round_):
                say(f"peers: {name}" + (f" (round {round_ + 1} of {rounds})" if rounds > 1 else ""))
                try:
                    result = river_in_process(messages) if name == "river" else \
                        run_system(name, topic, topics, events, workdir)
                except Exception as exc:   # one peer failing must not lose the others' figures
                    result = {"error": f"{type(exc).__name__}: {str(exc)[-500:]}"}
                runs[name].append(result)
                say(f"peers: {name}: {result}")
    finally:
        topics.close()
    for name, done in runs.items():
        results[name] = median_run(done)
        if rounds > 1:
            results[name]["runs"] = [r.get("events_per_s") for r in done]
    results["load_after"] = round(os.getloadavg()[0], 2)
    return results


def round_order(systems: list, round_: int) -> list:
    """The systems in the order round `round_` (from 0) runs them: as given, then reversed, ..."""
    return list(systems) if round_ % 2 == 0 else list(reversed(systems))


def median_run(done: list) -> dict:
    """The run with the median events/s among those that did not fail (the lower of the middle
    two), else the last failure."""
    good = sorted((r for r in done if "error" not in r), key=lambda r: r["events_per_s"])
    return dict(good[(len(good) - 1) // 2]) if good else dict(done[-1])


def paired(results: dict, first: str, second: str) -> str:
    """`first`'s events/s over `second`'s, round by round (a round where either failed is left out),
    how many rounds `first` was ahead, and the median ratio (the mean of the middle two if even)."""
    a, b = results[first].get("runs") or [results[first].get("events_per_s")], \
        results[second].get("runs") or [results[second].get("events_per_s")]
    ratios = [x / y for x, y in zip(a, b) if x and y]
    if not ratios:
        return f"{first} / {second}: no round where both ran"
    ordered = sorted(ratios)
    median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
    return (f"{first} / {second}, per round: {', '.join(f'{r:.3f}' for r in ratios)}; ahead in "
            f"{sum(r > 1 for r in ratios)} of {len(ratios)}; median {median:.3f}")


def table(results: dict) -> list[str]:
    ceiling = results.get("river", {}).get("events_per_s")
    rounds = results.get("rounds", 1)
    what = f"events/s (median of {rounds} rounds)" if rounds > 1 else "events/s"
    lines = [f"| system | {what} | ratio to River's loop |", "|---|---:|---:|"]
    for name in SYSTEMS:
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {DESCRIPTIONS[name]} | failed: {r['error'][:80]} | - |")
            continue
        ratio = f"{r['events_per_s'] / ceiling:.2f}" if ceiling else "-"
        lines.append(f"| {DESCRIPTIONS[name]} | {r['events_per_s']:,.0f} | {ratio} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--only", default=",".join(SYSTEMS))
    parser.add_argument("--json", default="")
    parser.add_argument("--rounds", type=int, default=1, help="runs per system, alternating order (median shown)")
    parser.add_argument("--paired", default="", help="A,B: A's events/s over B's in each round")
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--topic")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.child:
        CHILDREN[args.child](args.topic, args.out, args.events)
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    systems = [s for s in args.only.split(",") if s]
    pair = [s for s in args.paired.split(",") if s]
    if pair and (len(pair) != 2 or not set(pair) <= set(systems)):
        parser.error("--paired takes two of the systems run (--only), e.g. shopstream_confluent,bytewax")
    results = run_peers(args.events, systems, rounds=args.rounds)
    print("\n".join(table(results)))
    if args.rounds > 1:
        print("events/s per round: " + "; ".join(f"{name} {[round(x) if x else None for x in r['runs']]}"
                                                 for name, r in results.items() if isinstance(r, dict) and "runs" in r))
    if pair:
        print(paired(results, *pair))
    print(f"load average {results['load_before']} before, {results['load_after']} after")
    from shopstream.compiled import compiled
    print(f"engine modules compiled by scripts/compile.py: {', '.join(compiled()) or 'none (the sources)'}")
    print("CPU seconds per process (all threads, start-up included): " + ", ".join(
        f"{name} {r['cpu_s']}" for name, r in results.items() if isinstance(r, dict) and "cpu_s" in r))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
