"""The scoring API's HTTP front and its hand-over to the poll loop, without Kafka: a real
server on loopback, a thread standing in for the poll loop (it drains the desk as
`Worker.run` does), real engines. Bad requests, slow and excess connections never reach an
engine; a what-if reads the live state and changes nothing."""

from __future__ import annotations

import http.client
import json
import pickle
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from shopstream.engine import Engine
from shopstream.events import event_from_record
from shopstream.generator import generate
from stream.owners import encode_map
from stream.score_codec import decode_request, date_event
from stream.serving import ScoreDesk, ScoreServer, ServeMetrics, Ticket
from stream.settings import ServeSettings, WorkerSettings

TOPIC = "events"


class OnePartitionProducer:
    """Every user on partition 0; a recorded request's send fails (no Kafka here)."""

    def partitions_for(self, topic):
        return {0}

    def send(self, *args, **kwargs):
        raise RuntimeError("no broker in this test")

    def close(self, timeout=None):
        pass


class Loop:
    """Stands in for the worker's poll loop: drains the desk every few milliseconds."""

    def __init__(self, desk: ScoreDesk, partitions: dict):
        self.desk, self.partitions = desk, partitions
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            self.desk.drain(self.partitions)
            self.stop.wait(0.002)


@pytest.fixture(scope="module")
def engine():
    engine = Engine.fresh("logreg", "shop")
    records = list(generate(4000, seed=3))
    for record in records:
        engine.process(event_from_record(record))
    engine.last_record = records[-1]
    return engine


def serve(engine, owned=True, registry=None, loop_class=None, producer=None, **settings):
    """A score server on a free port, with a desk and a stand-in poll loop (`Loop` unless given) owning
    partition 0 of TOPIC (unless not `owned`), writing events through `producer`."""
    registry = registry or CollectorRegistry()
    server = ScoreServer(ServeSettings(port=0, **{"timeout": 1.0, **settings}))
    desk = ScoreDesk(TOPIC, server.address, f"w-{server.port}")
    partitions = {TopicPartition(TOPIC, 0): SimpleNamespace(engine=engine)} if owned else {}
    loop = (loop_class or Loop)(desk, partitions)
    loop.thread.start()
    server.start(desk, producer or OnePartitionProducer(), registry)
    return SimpleNamespace(server=server, desk=desk, loop=loop, registry=registry, port=server.port)


def stop(served):
    served.loop.stop.set()
    served.loop.thread.join()
    served.server.stop()


@pytest.fixture
def api(engine):
    served = serve(engine)
    yield served
    stop(served)


def post(port, path, payload, headers=None, raw=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = raw if raw is not None else json.dumps(payload).encode()
    connection.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    answer = connection.getresponse()
    text = answer.read()
    connection.close()
    return answer.status, json.loads(text), dict(answer.getheaders())


def errors(registry, reason):
    return registry.get_sample_value("shopstream_score_errors_total", {"reason": reason}) or 0


def request_for(engine, **changes):
    record = engine.last_record
    return {"user_id": str(record["user_id"]), "user_session": str(record["user_session"]),
            "product_id": "p-new", "event_type": "cart", "price": 12.5, **changes}


def test_what_if_scores_the_live_state_and_changes_nothing(api, engine):
    before = pickle.dumps(engine)
    payload = request_for(engine)
    status, answer, _ = post(api.port, "/score/whatif", payload)
    assert status == 200, answer
    event, timed = decode_request(json.dumps(payload).encode(), time.time())
    expected = engine.what_if(date_event(event, timed, engine.joiner.max_time))
    assert answer["score"] == expected[engine.champion][3] and 0 < answer["score"] < 1
    assert answer["recorded"] is False and answer["model"] == "logreg" and answer["partition"] == 0
    assert [m["score"] for m in answer["models"]] == [p for _, _, _, p in expected]
    # the session's live state matters: a view with nothing carted scores differently
    assert post(api.port, "/score/whatif", request_for(engine, event_type="view"))[1]["score"] != answer["score"]
    assert pickle.dumps(engine) == before  # nothing recorded, learned or folded in
    assert api.registry.get_sample_value("shopstream_score_requests_total", {"mode": "whatif", "code": "200"}) == 2


def test_a_what_if_with_never_seen_names_changes_no_engine(engine):
    """River's StandardScaler adds an entry for every key it transforms: raw feature names never seen
    before grew the engine with each what-if (100 what-ifs of 256 new names: 15x its size)."""
    from shopstream.events import Event

    raw = Engine.fresh("logreg", "raw")
    for i in range(200):
        raw.process(Event(1.7e9 + i, "cart" if i % 3 == 0 else "view", f"p{i % 7}", f"u{i % 5}", f"s{i % 11}",
                          event_id=f"e{i}", features={"a": float(i % 4), "b": 1.0}))
    raw.last_record = {"user_id": "u1", "user_session": "s1"}
    unseen = {"features": {f"new-{i}": 1.0 for i in range(50)}}
    shop_unseen = {**unseen, "brand": "never-seen", "platform": "never-seen", "channel": "never-seen",
                   "category_code": "never.seen"}
    for model_engine, changes in ((raw, unseen), (engine, shop_unseen)):
        served = serve(model_engine)
        try:
            before = pickle.dumps(model_engine)
            for _ in range(3):
                status, answer, _ = post(served.port, "/score/whatif", request_for(model_engine, **changes))
                assert status == 200, answer
            assert pickle.dumps(model_engine) == before, model_engine.features.name
        finally:
            stop(served)


def test_bad_requests_get_a_4xx_with_one_line_and_are_counted(api, engine):
    before = pickle.dumps(engine)
    cases = [
        ("/score", {"user_id": "u"}, None, 400, "missing_field"),
        ("/score", {**request_for(engine), "pirce": 3}, None, 400, "unknown_field"),
        ("/score", request_for(engine, price=-1), None, 400, "invalid_value"),
        ("/score", None, b"{not json", 400, "malformed_json"),
        ("/score?record=false", request_for(engine), None, 400, "unknown_field"),
        ("/score/whatif", request_for(engine, user_session="never-seen"), None, 404, "unknown_session"),
        ("/scores", request_for(engine), None, 404, "not_found"),
        ("/score", request_for(engine), None, 503, "kafka_unavailable"),  # this test has no broker
    ]
    for path, payload, raw, status, reason in cases:
        counted = errors(api.registry, reason)
        got, answer, _ = post(api.port, path, payload, raw=raw)
        assert (got, answer["reason"]) == (status, reason), (path, answer)
        assert answer["error"] and "\n" not in answer["error"]
        assert errors(api.registry, reason) == counted + 1, reason
    assert pickle.dumps(engine) == before


def test_an_event_time_the_worker_would_dead_letter_is_refused_at_once(engine):
    """The front checked a fixed 300 s of future skew while the worker dead-letters past its
    --max-future-skew: such a request was written, dead-lettered, and timed out 504."""
    class CountingProducer(OnePartitionProducer):
        sent = 0

        def send(self, *args, **kwargs):
            CountingProducer.sent += 1
            return super().send(*args, **kwargs)

    served = serve(engine, producer=CountingProducer())
    served.desk.max_future_skew = 60.0  # the worker's --max-future-skew, as run_worker passes it
    try:
        status, answer, _ = post(served.port, "/score", request_for(engine, event_time=time.time() + 200))
        assert (status, answer["reason"]) == (400, "invalid_value") and "ahead of the record time" in answer["error"]
        assert errors(served.registry, "invalid_value") == 1 and CountingProducer.sent == 0
    finally:
        stop(served)


def raw_exchange(port, data: bytes, wait: float = 5.0) -> bytes:
    """Sends `data` and reads until the server closes the connection (a socket timeout if it never does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_a_client_that_expects_100_continue_is_told_to_send_its_body(api, engine):
    """Such a client (RFC 9110 10.1.1: .NET's HttpWebRequest, older curl for larger bodies) sends its
    headers and waits for "100 Continue" before the body: without it, it waited out its own timeout
    or was cut off as a slow client. Another expectation is refused (417), counted."""
    body = json.dumps(request_for(engine)).encode()
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.sendall(b"POST /score/whatif HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"   # before any body byte was sent
        sock.sendall(body)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"score"' in answer, answer
    answer = raw_exchange(api.port, b"POST /score/whatif HTTP/1.1\r\nExpect: 200-ok\r\n"
                                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert answer.startswith(b"HTTP/1.1 417 Expectation Failed") and b"only 100-continue" in answer, answer
    assert errors(api.registry, "expectation_failed") == 1 and errors(api.registry, "slow_client") == 0


def test_oversized_bodies_and_slow_clients_are_cut_off(api):
    answer = raw_exchange(api.port, b"POST /score HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ") and b"exceeds the 16384-byte limit" in answer
    answer = raw_exchange(api.port, b"POST /score HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411 ")
    answer = raw_exchange(api.port, b"POST /score HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Transfer-Encoding is not accepted" in answer
    answer = raw_exchange(api.port, b"POST /score HTTP/1.1\r\nContent-Le")           # stops mid-header
    assert answer.startswith(b"HTTP/1.1 408 ") and b"slow_client" in answer
    answer = raw_exchange(api.port, b"POST /score HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")  # body never ends
    assert answer.startswith(b"HTTP/1.1 408 ") and b"not received within 1 s" in answer
    answer = raw_exchange(api.port, b"")                                                # says nothing at all
    assert answer.startswith(b"HTTP/1.1 408 ")
    answer = raw_exchange(api.port, b"POST /score HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 10_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert errors(api.registry, "slow_client") == 3 and errors(api.registry, "body_too_large") == 1


def requests_counted(registry, mode, code):
    return registry.get_sample_value("shopstream_score_requests_total", {"mode": mode, "code": str(code)}) or 0


def test_a_content_length_that_is_not_a_short_ascii_number_is_refused_and_counted(api, engine):
    """"²" passes str.isdigit() but not int(); thousands of digits pass it but int() refuses them: both
    escaped the front as ValueError (no answer, nothing counted)."""
    body = json.dumps(request_for(engine)).encode()
    for length in ("\u00b2".encode("latin-1"), b"1" * 5000, b"12345678901", b"+5"):
        counted, refused = errors(api.registry, "bad_request_line"), requests_counted(api.registry, "whatif", 400)
        answer = raw_exchange(api.port, b"POST /score/whatif HTTP/1.1\r\nContent-Length: " + length + b"\r\n\r\n"
                              + body, wait=3.0)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"is not a byte count" in answer, (length[:20], answer)
        assert b"Connection: close" in answer  # and closed: raw_exchange read to its end
        assert errors(api.registry, "bad_request_line") == counted + 1
        assert requests_counted(api.registry, "whatif", 400) == refused + 1


def test_a_request_framed_two_ways_is_refused_and_its_connection_closed(api, engine):
    """Request smuggling: a proxy in front and this server must never see different requests in the
    same bytes. Repeated Content-Length, any Transfer-Encoding, blanks around a header name: 400, and
    the connection closed (what follows on it is not framed for sure)."""
    body = json.dumps(request_for(engine)).encode()
    heads = [b"Content-Length: 0\r\nContent-Length: %d" % len(body),
             b"Transfer-Encoding: chunked\r\nContent-Length: %d" % len(body),
             b"Content-Length : %d" % len(body),
             b"Content-Length: %d\r\n Transfer-Encoding: chunked" % len(body)]
    for head in heads:
        counted = errors(api.registry, "bad_request_line")
        answer = raw_exchange(api.port, b"POST /score/whatif HTTP/1.1\r\n" + head + b"\r\n\r\n" + body, wait=3.0)
        assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1 ") == 1, (head, answer)
        assert errors(api.registry, "bad_request_line") == counted + 1
    assert requests_counted(api.registry, "whatif", 200) == 0


def test_a_body_sent_with_another_method_is_never_read_as_the_next_request(api, engine):
    """A GET with a body got its 405, and its unread body was then answered as the next request."""
    inner = json.dumps(request_for(engine)).encode()
    smuggled = b"POST /score/whatif HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner
    last = b"POST /nowhere HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(api.port, b"GET /score HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
                          + smuggled + last, wait=3.0)
    assert [a[:3] for a in answer.split(b"HTTP/1.1 ")[1:]] == [b"405", b"404"]
    assert requests_counted(api.registry, "whatif", 200) == 0


def test_http_1_0_keeps_its_connection_only_when_asked_and_a_bare_lf_is_refused_at_once(api, engine):
    body = json.dumps(request_for(engine)).encode()
    request = b"POST /score/whatif HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    answer = raw_exchange(api.port, request, wait=3.0)  # read to its end: the server closed it
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer
    kept = request.replace(b"\r\n\r\n", b"\r\nConnection: Keep-Alive\r\n\r\n", 1)
    last = b"POST /nowhere HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    answers = raw_exchange(api.port, kept + last, wait=3.0).split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"404"] and b"Connection: keep-alive" in answers[0]
    started = time.monotonic()
    answer = raw_exchange(api.port, b"POST /score/whatif HTTP/1.1\nContent-Length: 5\n\n{}", wait=3.0)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"bare LF" in answer
    assert time.monotonic() - started < 0.5  # not a 408 at the 1 s deadline


def test_refusals_before_the_request_is_routed_are_counted_with_their_path(api):
    """411, 413 and a body that never ends (408) were counted as errors but not as requests answered."""
    cases = [(b"POST /score HTTP/1.1\r\nHost: x\r\n\r\n", "record", 411),
             (b"POST /score/whatif HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n", "whatif", 413),
             (b"POST /score HTTP/1.1\r\nContent-Length: 50\r\n\r\n{", "record", 408)]
    for data, mode, status in cases:
        counted = requests_counted(api.registry, mode, status)
        assert raw_exchange(api.port, data).startswith(b"HTTP/1.1 %d " % status)
        assert requests_counted(api.registry, mode, status) == counted + 1, (mode, status)
    raw_exchange(api.port, b"POST /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")  # 411 on no API path: not a mode
    assert api.registry.get_sample_value("shopstream_score_requests_total", {"mode": "other", "code": "411"}) is None


def test_a_flood_of_idle_connections_is_capped_and_then_drained(engine):
    served = serve(engine, max_connections=3, timeout=1.0)
    try:
        flood = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(3)]
        time.sleep(0.2)
        refused = raw_exchange(served.port, b"")
        assert refused.startswith(b"HTTP/1.1 429 ") and b"too_many_connections" in refused
        for sock in flood:  # each slow connection is answered 408 and closed at its deadline
            assert sock.recv(1000).startswith(b"HTTP/1.1 408 ")
            sock.close()
        status, answer, _ = post(served.port, "/score/whatif", request_for(engine))
        assert status == 200, answer
        assert errors(served.registry, "too_many_connections") == 1
    finally:
        stop(served)


def test_a_shared_token_is_required_when_set(engine):
    served = serve(engine, token="s3cret-token")
    try:
        assert post(served.port, "/score/whatif", request_for(engine))[:2][0] == 401
        wrong = {"Authorization": "Bearer nope"}
        assert post(served.port, "/score/whatif", request_for(engine), wrong)[1]["reason"] == "unauthorized"
        right = {"Authorization": "Bearer s3cret-token"}
        assert post(served.port, "/score/whatif", request_for(engine), right)[0] == 200
        assert errors(served.registry, "unauthorized") == 2
    finally:
        stop(served)


def test_a_worker_that_does_not_own_the_partition_forwards_to_its_owner(engine):
    owner = serve(engine)
    other = serve(engine, owned=False)
    try:
        # no map yet: where to ask is unknown, said so
        status, answer, headers = post(other.port, "/score/whatif", request_for(engine))
        assert (status, answer["reason"], answer["partition"]) == (503, "not_owner", 0)
        assert headers["Retry-After"] == "1"
        # the group's assignment tells every member who owns partition 0
        other.desk.owners.update(encode_map(TOPIC, 1, {0: owner.server.address}))
        status, answer, headers = post(other.port, "/score/whatif", request_for(engine))
        assert status == 200 and answer["served_by"] == owner.desk.name, answer
        assert headers["X-Shopstream-Forwarded-To"] == owner.server.address
        assert other.registry.get_sample_value("shopstream_score_forwarded_total", {"outcome": "answered"}) == 1
        # a forwarded request is never forwarded again: it says where to ask instead
        status, answer, _ = post(other.port, "/score/whatif", request_for(engine), {"X-Shopstream-Forwarded": "x"})
        assert (status, answer["owner"]) == (503, owner.server.address)
        assert f"not forwarded again; its owner is {owner.server.address}): ask it directly" in answer["error"], answer
        # an owner that does not answer: 503 naming it
        other.desk.owners.update(encode_map(TOPIC, 1, {0: "127.0.0.1:9"}))
        status, answer, _ = post(other.port, "/score/whatif", request_for(engine))
        assert (status, answer["reason"], answer["owner"]) == (503, "owner_unreachable", "127.0.0.1:9")
    finally:
        stop(owner)
        stop(other)


def test_the_api_listens_on_loopback_by_default():
    server = ScoreServer(ServeSettings(port=0))
    try:
        assert server.socket.getsockname() == ("127.0.0.1", server.port)
        assert server.address == f"127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_the_desk_lets_go_of_waiting_requests_when_their_partition_leaves_or_the_worker_stops(engine):
    desk = ScoreDesk(TOPIC, "127.0.0.1:1", "me")
    answers = []

    def ticket(event_id, partition=0):
        event, _ = decode_request(json.dumps(request_for(engine, event_id=event_id)).encode(), time.time())
        return Ticket(event, partition, False, time.monotonic() + 60,
                      lambda status, body: answers.append((status, body)))

    owned = {TopicPartition(TOPIC, 0): SimpleNamespace(engine=engine)}
    assert desk.submit(ticket("a")) and desk.submit(ticket("b"))
    desk.drain(owned)
    assert set(desk.awaited) == {(0, "a"), (0, "b")} and desk.pending == 2 and not answers  # waiting for their events
    desk.drain({})  # a rebalance took partition 0 away
    assert [(status, body["reason"]) for status, body in answers] == [(503, "partition_moved")] * 2
    assert not desk.awaited and desk.pending == 0
    assert desk.submit(ticket("c"))
    desk.close()  # the worker stops: nothing will process what waits
    assert answers[-1][0] == 503 and answers[-1][1]["reason"] == "stopping"
    assert not desk.submit(ticket("d")) and desk.pending == 0


def test_a_waiting_request_is_answered_by_its_own_event_only(engine):
    """Event ids are unique per partition (the engine's duplicates): the same id on another partition, or
    sent for another user, answered a waiting request with someone else's score."""
    from shopstream.events import Event

    desk = ScoreDesk(TOPIC, "127.0.0.1:1", "me")
    answers = []
    mine = Event(1.7e9, "view", "p", "alice", "s", event_id="order-1")
    assert desk.submit(Ticket(mine, 0, False, time.monotonic() + 60, lambda status, body: answers.append(body)))
    state = SimpleNamespace(engine=engine)
    desk.drain({TopicPartition(TOPIC, 0): state})
    other_partition = Event(1.7e9, "view", "p2", "mallory", "s9", event_id="order-1")
    desk.processed(state, SimpleNamespace(partition=1, offset=77), other_partition, 0.93)
    other_user = Event(1.7e9, "view", "p2", "mallory", "s9", event_id="order-1")
    desk.processed(state, SimpleNamespace(partition=0, offset=78), other_user, 0.94)
    assert not answers and desk.pending == 1
    desk.processed(state, SimpleNamespace(partition=0, offset=79), mine, 0.25)
    assert [(body["score"], body["offset"]) for body in answers] == [(0.25, 79)] and not desk.awaited


def test_a_request_whose_event_the_worker_dead_letters_is_answered_at_once(tmp_path, engine):
    """The loop answers 400 when it dead-letters a waiting request's event (here: dated too far ahead,
    with no API in between), instead of leaving it to time out 504 and the partition to look behind."""
    from fakes import FakeClients
    from shopstream.events import Event, encode_event
    from stream.worker import Worker

    settings = WorkerSettings.from_options(topic=TOPIC, group="g", features="raw", control_topic="",
                                           metrics_port=-1, until_idle=0.01, checkpoints=str(tmp_path / "ckpt"),
                                           checkpoint_background="off")
    ahead = Event(time.time() + 86_400, "view", "p", "u1", "s1", event_id="ahead-1")
    ok = Event(1.7e9, "view", "p", "u1", "s1", event_id="ok-1")
    desk = ScoreDesk(TOPIC, "127.0.0.1:1", "me")
    registry = CollectorRegistry()
    desk.metrics = ServeMetrics(registry)
    answers = []
    for event in (ahead, ok):
        assert desk.submit(Ticket(event, 0, False, time.monotonic() + 60,
                                  lambda status, body: answers.append((status, body))))
    clients = FakeClients(settings, {0: [encode_event(ahead), encode_event(ok)]}, tmp_path / "ckpt")
    worker = Worker(settings, CollectorRegistry(), clients, desk=desk)
    worker.membership.subscribe()
    assert worker.run() == 0
    (status, body), (ok_status, _) = answers
    assert (status, body["reason"], ok_status) == (400, "invalid_value", 200)
    assert "the worker refused the event" in body["error"] and "ahead of the record time" in body["error"]
    assert errors(registry, "invalid_value") == 1


class PollingLoop:
    """Stands in for `Worker.run` as it waits: holds the gate, starts the clerk, then sits in one
    "poll" (the gate open) until the test ends it, as an idle stream's poll sits out its timeout."""

    def __init__(self, desk: ScoreDesk, partitions: dict):
        self.desk, self.partitions = desk, partitions
        self.poll_may_return = threading.Event()
        self.in_poll = threading.Event()
        self.polls_returned = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        self.desk.gate.hold()
        self.desk.start_clerk(lambda: self.partitions)
        self.desk.drain(self.partitions)
        with self.desk.gate.opened():
            self.in_poll.set()
            self.poll_may_return.wait()
        self.polls_returned += 1
        self.desk.close()
        self.desk.gate.release()


def test_a_what_if_is_answered_while_the_loop_waits_in_poll(engine):
    """The clerk answers at once: without it the request waits for the poll to return, which
    here it never does before the answer (the front would answer 504 after its 1 s timeout)."""
    served = serve(engine, loop_class=PollingLoop)
    server, desk, loop = served.server, served.desk, served.loop
    try:
        assert loop.in_poll.wait(10)
        before = pickle.dumps(engine)
        for _ in range(3):
            status, answer, _ = post(server.port, "/score/whatif", request_for(engine))
            assert status == 200, answer
        assert loop.polls_returned == 0 and desk.clerk_drains >= 1  # answered while the loop sat in its poll
        status, answer, _ = post(server.port, "/score/whatif", request_for(engine, user_session="never-seen"))
        assert (status, answer["reason"]) == (404, "unknown_session")
        assert pickle.dumps(engine) == before
    finally:
        loop.poll_may_return.set()
        loop.thread.join(10)
        server.stop()
    assert not loop.thread.is_alive() and desk.stopped


def test_rebalance_callbacks_take_the_gate_only_while_the_loop_waits_in_poll():
    """kafka-python calls them on its IO thread while the loop is blocked in poll (the gate is
    open: they must exclude the clerk) or in close (the loop holds the gate and waits for them:
    taking it would deadlock)."""
    from stream.serving import EngineGate

    gate = EngineGate()
    gate.hold()
    ran = []

    def callback():
        with gate.callback():
            ran.append(gate.lock.locked())

    during_close = threading.Thread(target=callback)
    during_close.start()
    during_close.join(10)
    assert ran == [True] and not during_close.is_alive()  # ran beside the loop's hold, no deadlock
    with gate.opened():
        gate.lock.acquire()  # a clerk answering a request
        during_poll = threading.Thread(target=callback)
        during_poll.start()
        during_poll.join(0.2)
        assert during_poll.is_alive() and len(ran) == 1  # waits for the clerk, never beside it
        gate.lock.release()
        during_poll.join(10)
        assert ran == [True, True]
    assert gate.lock.locked() and not gate.open  # the loop holds it again
    gate.release()


def test_a_recorded_request_never_rings_the_clerk(engine):
    """Only a what-if can be answered inside the loop's poll; a recorded request waits for its
    event, which the loop books after its poll returns. Ringing the clerk for it only woke a
    thread to compete with the loop and the front for the interpreter."""
    desk = ScoreDesk(TOPIC, "127.0.0.1:1", "me")
    answers = []

    def ticket(whatif, event_id):
        event, _ = decode_request(json.dumps(request_for(engine, event_id=event_id)).encode(), time.time())
        return Ticket(event, 0, whatif, time.monotonic() + 60, lambda status, body: answers.append((status, body)))

    doorbell = desk._doorbell  # what wakes the clerk (no clerk thread here: the bell is the behaviour)
    desk.gate.hold()
    assert desk.submit(ticket(False, "r1"))
    with desk.gate.opened():  # the loop begins a poll with only a recorded request waiting: no ring
        assert not doorbell.is_set()
        assert desk.submit(ticket(False, "r2"))  # one arriving during the poll: no ring either
        assert not doorbell.is_set()
        assert desk.submit(ticket(True, "w1"))   # a what-if rings
        assert doorbell.is_set()
    doorbell.clear()
    owned = {TopicPartition(TOPIC, 0): SimpleNamespace(engine=engine)}
    desk.drain(owned)  # the loop, after its poll: books the recorded ones, answers the what-if
    assert set(desk.awaited) == {(0, "r1"), (0, "r2")} and [status for status, _ in answers] == [200]
    with desk.gate.opened():  # nothing but recorded requests waiting: the next poll rings nobody
        assert not doorbell.is_set()
    assert desk.submit(ticket(True, "w2"))
    with desk.gate.opened():  # a what-if queued just before the poll began: rung as the gate opens
        assert doorbell.is_set()
    desk.gate.release()


def test_answers_given_before_the_front_runs_share_one_wake_up():
    """The loop answering several requests in a row (one batch of events, one drain) wakes the
    front's asyncio loop once, not once per answer: each wake-up is a write that lets go of the
    interpreter, which the poll loop must then wait to get back."""
    import asyncio

    from stream.serving import Replies

    loop = asyncio.new_event_loop()
    try:
        replies = Replies(loop)
        futures = [loop.create_future() for _ in range(3)]
        answering = threading.Thread(target=lambda: [replies.put(f, (200, {"n": i})) for i, f in enumerate(futures)])
        answering.start()
        answering.join()
        assert replies.wakeups == 1
        assert loop.run_until_complete(asyncio.gather(*futures)) == [(200, {"n": 0}), (200, {"n": 1}), (200, {"n": 2})]
        later = loop.create_future()
        replies.put(later, (200, {}))  # after the delivery: a new wake-up, never none
        assert replies.wakeups == 2 and loop.run_until_complete(later) == (200, {})
    finally:
        loop.close()


class SilentProducer(OnePartitionProducer):
    """Takes the send and never completes it: the request's event never comes back."""

    def send(self, *args, **kwargs):
        return SimpleNamespace(add_errback=lambda callback: None)


def test_a_recorded_request_whose_event_never_comes_back_is_answered_504_at_its_deadline(engine):
    served = serve(engine, producer=SilentProducer(), timeout=0.5)
    try:
        status, answer, _ = post(served.port, "/score", request_for(engine, event_id="lost-1"))
        assert (status, answer["reason"]) == (504, "timeout") and "'lost-1'" in answer["error"]
        assert errors(served.registry, "timeout") == 1
        status, answer, _ = post(served.port, "/score/whatif", request_for(engine))  # the front goes on
        assert status == 200, answer
    finally:
        stop(served)


def test_a_partition_behind_its_stream_refuses_new_recorded_requests_at_once_and_answers_what_ifs(engine):
    """Shedding load: once the partition's oldest waiting recorded request has used half its time,
    a new recorded request is refused at once (503 behind, nothing written) instead of waiting to
    time out; what-ifs are still answered; when nothing waits any more, recorded requests go in."""
    class CountingProducer(SilentProducer):
        sent = 0

        def send(self, *args, **kwargs):
            CountingProducer.sent += 1
            return super().send(*args, **kwargs)

    served = serve(engine, producer=CountingProducer(), timeout=1.0)
    first: list = []
    try:
        waiting = threading.Thread(target=lambda: first.append(post(served.port, "/score",
                                                                    request_for(engine, event_id="slow-1"))))
        waiting.start()
        time.sleep(0.5)
        started = time.monotonic()
        while not served.desk.oldest_deadline or time.monotonic() - started < 0.1:
            time.sleep(0.01)   # the loop's sweep has seen slow-1 waiting past half its 1 s
        started = time.monotonic()
        status, answer, headers = post(served.port, "/score", request_for(engine, event_id="slow-2"))
        assert (status, answer["reason"], answer["partition"]) == (503, "behind", 0), answer
        assert time.monotonic() - started < 0.5 and headers["Retry-After"] == "1"
        assert "/score/whatif" in answer["error"] and errors(served.registry, "behind") == 1
        assert CountingProducer.sent == 1   # slow-2's event was never written
        status, answer, _ = post(served.port, "/score/whatif", request_for(engine))
        assert status == 200, answer
        waiting.join(5)
        assert first[0][0] == 504
        deadline = time.monotonic() + 3
        while served.desk.oldest_deadline and time.monotonic() < deadline:
            time.sleep(0.01)   # slow-1 let go by the loop: the partition is no longer behind
        status, answer, _ = post(served.port, "/score", request_for(engine, event_id="slow-3"))
        assert (status, answer["reason"]) == (504, "timeout") and CountingProducer.sent == 2, answer
    finally:
        stop(served)


def test_the_thread_that_answers_writes_to_the_client_and_wakes_no_front(api, engine):
    """On a kept-alive connection the loop (here its stand-in) writes a handed-over request's answer
    to the client's socket itself: the front's asyncio loop is not woken per answer (each wake-up
    handed it the interpreter, which the poll loop then waited to get back)."""
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        scores = []
        for i in range(5):
            connection.request("POST", "/score/whatif", body=json.dumps(request_for(engine, price=10.0 + i)),
                               headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            assert answer.status == 200 and answer.getheader("Connection") == "keep-alive"
            scores.append(json.loads(answer.read())["score"])
        assert len(set(scores)) == 5  # five answers, each to its own request
        assert api.server.replies.wakeups == 0
        assert api.registry.get_sample_value("shopstream_score_requests_total", {"mode": "whatif", "code": "200"}) == 5
        assert api.registry.get_sample_value("shopstream_score_seconds_count", {"mode": "whatif"}) == 5
    finally:
        connection.close()


def test_pipelined_requests_are_answered_in_order(api, engine):
    """A client that sends its next request before reading the answer to the last gets the answers
    in the order of its requests: the front waits for the earlier answer to be written first."""
    requests = b""
    for i, path in enumerate(["/score/whatif", "/score/whatif", "/nowhere", "/score/whatif"]):
        body = json.dumps(request_for(engine, price=20.0 + i)).encode()
        requests += (f"POST {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n"
                     + ("Connection: close\r\n" if i == 3 else "") + "\r\n").encode() + body
    answers = raw_exchange(api.port, requests).split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200", b"404", b"200"]
    prices = [json.loads(a.split(b"\r\n\r\n", 1)[1])["score"] for a in answers if a.startswith(b"200")]
    expected = [post(api.port, "/score/whatif", request_for(engine, price=20.0 + i))[1]["score"] for i in (0, 1, 3)]
    assert prices == expected


def test_an_answer_for_a_client_that_left_is_dropped_and_its_socket_copy_closed(engine):
    """The answering thread writes to its own duplicate of the client's socket: once the client
    has gone the front closes that copy (no descriptor left open) and a late answer writes nothing."""
    import os

    registry = CollectorRegistry()
    server = ScoreServer(ServeSettings(port=0, timeout=5.0))
    desk = ScoreDesk(TOPIC, server.address, "w")  # no loop: requests wait in the desk
    desk.owned = frozenset({0})
    server.start(desk, SilentProducer(), registry)
    try:
        open_fds = len(os.listdir("/proc/self/fd"))
        body = json.dumps(request_for(engine, event_id="gone-1")).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /score HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            deadline = time.monotonic() + 5
            while desk.inbox.empty() and time.monotonic() < deadline:
                time.sleep(0.01)
            ticket = desk.inbox.get_nowait()
        deadline = time.monotonic() + 5  # the front sees the connection end and closes its copy
        while len(os.listdir("/proc/self/fd")) > open_fds and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(os.listdir("/proc/self/fd")) <= open_fds
        ticket.answer(200, {"score": 0.5})  # late: dropped, nothing raised
        assert server.replies.wakeups == 0
    finally:
        server.stop()


def test_a_5xx_given_by_the_loop_closes_the_connection(engine):
    """A recorded request whose partition moves is answered 503 by the loop; a 5xx closes the
    connection, so the front writes it (woken once) and closes."""
    registry = CollectorRegistry()
    server = ScoreServer(ServeSettings(port=0, timeout=5.0))
    desk = ScoreDesk(TOPIC, server.address, "w")
    desk.owned = frozenset({0})
    server.start(desk, SilentProducer(), registry)
    body = json.dumps(request_for(engine, event_id="moved-1")).encode()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"POST /score HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            deadline = time.monotonic() + 5
            while desk.inbox.empty() and time.monotonic() < deadline:
                time.sleep(0.01)
            desk.drain({})  # the loop, after a rebalance took partition 0 away
            answer = b""
            while chunk := sock.recv(65536):  # to EOF: the connection is closed after the answer
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Connection: close" in answer
        assert b'"partition_moved"' in answer and server.replies.wakeups == 1
        assert errors(registry, "partition_moved") == 1
    finally:
        server.stop()


def test_without_a_spare_descriptor_the_front_writes_the_answers(engine, monkeypatch):
    """The socket's copy for the answering thread needs a descriptor; out of them (a connection
    flood near the process's limit), the connection is served as before: the front writes."""
    import stream.serving as serving

    def no_descriptor(fd):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(serving.os, "dup", no_descriptor)
    served = serve(engine)
    try:
        status, answer, _ = post(served.port, "/score/whatif", request_for(engine))
        assert status == 200 and answer["recorded"] is False
        assert served.server.replies.wakeups == 1
    finally:
        stop(served)


def test_open_connections_are_capped_by_the_descriptors_the_process_may_open(monkeypatch):
    """Each connection holds two descriptors: 132 idle ones used a limit of 300 up, and then no
    checkpoint file could be opened. The soft limit is raised to the hard one; connections past
    what is left beside the worker's own descriptors are refused (429), not let in."""
    import resource

    from stream import serving

    limits = {"now": (300, 300)}
    monkeypatch.setattr(serving.resource, "getrlimit", lambda which: limits["now"])
    monkeypatch.setattr(serving.resource, "setrlimit", lambda which, value: limits.update(now=value))
    assert serving.connection_limit(1024) == (300 - serving.FD_RESERVE) // 2
    limits["now"] = (1024, 65536)   # a soft limit below the hard one: raised, then room for all
    assert serving.connection_limit(1024) == 1024 and limits["now"] == (65536, 65536)
    limits["now"] = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    assert serving.connection_limit(5000) == 5000

    def refused(which, value):
        raise ValueError("not allowed")
    monkeypatch.setattr(serving.resource, "setrlimit", refused)
    limits["now"] = (1024, 4096)   # may not be raised: what the soft limit holds
    assert serving.connection_limit(1024) == (1024 - serving.FD_RESERVE) // 2
