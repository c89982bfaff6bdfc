"""The scoring API: ``POST /score`` (recorded) and ``POST /score/whatif`` (never recorded),
served by the worker that owns the user's partition, from the engine that learns.

Recorded scores, exactly once. A request becomes an event: the owner writes it to the
events topic (keyed by user id, like the shop's own events, with the request's event id)
and answers once its poll loop has processed that event. The served number is then the
engine's prediction for that event, the one on the predictions topic and the one scored
in the metrics when its label resolves. After kill -9 the event is replayed from Kafka
onto the last checkpoint and scored again to the same number (replays are exact); a
request repeated with the same event id, or the same event sent by the shop's tracking,
is one prediction: the engine drops the second as a duplicate and the API answers with
the first one's score (``"duplicate": true``).

With ``--serve-recorded written``, a recorded score is answered once its event is written, not
once processed: the owner computes it at once on the live state (`Engine.serve`, as a what-if),
writes the event carrying it (`served.py`: the features and every model's output) and answers
when the broker acknowledges the write. The loop records that very prediction when it reaches
the event, and a replay after kill -9 reads it from the same record: exactly once as above, and
no wait behind the stream's backlog or a checkpoint's pause. What it gives up: the score reads
the state as processed so far (events of the session still in the backlog are not in it), and
when the shop's tracking writes the same event id *before* the API's record reaches the
partition, the tracking copy is the prediction (computed when processed) and the API's record
is dropped as its duplicate, so the number answered can differ from the one recorded. Nor is it
known when answering that the loop will record it: the lateness check reads the watermark as
processed so far, and the events ahead of the record may move it past the event (a client's
event time near the edge, a backlog longer than the attribution window in event time), so the
loop refuses it as late. So the answer says what is true, ``"recorded": false, "written": true``
(status 200, the fields of a recorded answer otherwise), never "recorded". Honouring such a record
although late would open a prediction whose label is already decided (labels.py); refusing requests
near the edge up front would refuse ones that get recorded and still guarantee nothing (the backlog's
event times are unknown here). The outcome is knowable: a repeat of the event id, once the loop has
handled it, is answered from the engine (``"recorded": true`` with the recorded score, or 409
``late_event``); before that, as first answered (``"duplicate": true``), and nothing is written again.

What-if scores read the partition's live feature state and every model, and record, learn
and fold in nothing.

Threads. The HTTP front is one asyncio loop on its own thread: slow or idle connections
cost no thread, every read has a deadline, connections are capped. It never touches an
engine: it hands each request to `ScoreDesk` (a queue), and the thread that answers it (the loop
or the clerk) writes the answer to the client's socket itself (`DirectAnswer`); the front is woken
only for what it must do (a 5xx closes the connection, a pipelined request waits its turn). The
engines are not thread-safe, so one `EngineGate` (a lock) says who may read them: the poll
loop holds it, except while it waits in ``consumer.poll`` (or for the broker's end offsets,
which queue behind the fetch in flight). A request never waits for that
poll's timeout (200 ms on an idle stream): the desk's clerk thread, rung by a request while
the loop waits in poll, takes the gate (once the loop has waited `CLERK_GRACE`, so a poll that
returns buffered records is never kept waiting) and answers what-ifs (and books recorded
requests) there; while the loop works, it drains the desk itself between two events. A
recorded score's event comes back through the loop's fetch, which the broker answers as
soon as the event is written. A request for a partition this worker does not own is
forwarded once to the owner (`owners.py` knows where; `group_owners.py` on librdkafka), or
answered 503 with the partition and the owner's address to ask.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import os
import queue
import resource
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Union
from urllib.parse import urlsplit

from kafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Histogram

from shopstream.events import MAX_FUTURE_SKEW, Event, encode_event

from .owners import Owners, OwnersAssignor, partition_for
from .score_codec import REASONS, RequestError, date_event, decode_request, encode, error_body
from .served import decode_served, encode_served, served_headers
from .settings import ServeSettings

log = logging.getLogger(__name__)
MAX_HEADERS = 8 * 1024
#: Seconds a kept-alive connection may sit idle between requests. Long, because closing a connection a
#: client is about to reuse resets its request (POSTs are not retried); shorter than Go's and most
#: clients' 90 s, so the client usually closes first. Idle connections cost no thread, only a slot.
KEEPALIVE_IDLE = 75.0
FORWARDED = "x-shopstream-forwarded"
#: Seconds the loop must have waited in its poll before the clerk answers in its place: longer than a
#: poll that returns buffered records takes, short beside the p99 <= 20 ms the API aims at.
CLERK_GRACE = 0.003
#: Scores answered when written, kept to answer a repeat of their event id the same (`ScoreDesk.served_lately`):
#: long enough for the loop to reach the event (then the engine's dedupe window answers), at most this many.
SERVED_KEPT_SECONDS = 60.0
SERVED_KEPT = 100_000
#: How often the front answers 504 the handed-over requests past their deadline (`--serve-timeout`).
SWEEP_SECONDS = 0.1
#: How often the loop lets go of the recorded requests past their deadline and says which partitions
#: are behind (their oldest waiting request has used half its time: new ones are refused at once).
SWEEP_AWAITED_SECONDS = 0.5
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
STATUS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
          408: "Request Timeout", 409: "Conflict", 411: "Length Required", 413: "Content Too Large",
          417: "Expectation Failed", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
          503: "Service Unavailable", 504: "Gateway Timeout"}
PATHS = {"/score": "record", "/score/whatif": "whatif"}


class ServeMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter("shopstream_score_requests", "Scoring API requests answered, by mode and HTTP status",
                                ["mode", "code"], registry=registry)
        self.seconds = Histogram("shopstream_score_seconds", "Scoring API latency: request read to answer ready",
                                 ["mode"], registry=registry, buckets=LATENCY_BUCKETS)
        self.errors = Counter("shopstream_score_errors", "Scoring API requests refused, by reason", ["reason"],
                              registry=registry)
        self.forwarded = Counter("shopstream_score_forwarded", "Scoring API requests forwarded to the partition's "
                                 "owner, by outcome", ["outcome"], registry=registry)
        # Every series exists from the start: dashboards and alerts see 0, not "no data".
        for mode in ("record", "whatif"):
            self.seconds.labels(mode)
            self.requests.labels(mode, "200")
        for reason in REASONS:
            self.errors.labels(reason)
        for outcome in ("answered", "failed"):
            self.forwarded.labels(outcome)


class Ticket:
    """One request handed to the poll loop; `settle` (any thread) answers it once."""

    __slots__ = ("event", "partition", "whatif", "deadline", "_settle")

    def __init__(self, event: Event, partition: int, whatif: bool, deadline: float,
                 settle: Callable[[int, dict], None]):
        self.event = event
        self.partition = partition
        self.whatif = whatif
        self.deadline = deadline
        self._settle = settle

    def answer(self, status: int, body: dict) -> None:
        self._settle(status, body)


class Replies:
    """Answers crossing from the poll loop's thread (or the clerk's, or the producer's) to the
    front's asyncio loop. Each crossing wakes that loop through its self-pipe: a write that lets
    go of the interpreter, which the poll loop must then wait to get back. Answers given before
    the front's loop ran share one wake-up (the batch of events that answers several recorded
    requests at once, the drain that answers several what-ifs)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._waiting: collections.deque = collections.deque()  # (future, (status, body)); deque: thread-safe
        self._woken = False
        self.wakeups = 0

    def put(self, future: asyncio.Future, value: tuple) -> None:
        """Any thread. Two threads racing may both wake the loop: harmless, never none."""
        self.call(_settle, future, value)

    def call(self, function: Callable, *args) -> None:
        """Any thread: `function(*args)` on the front's loop, sharing a wake-up with the others."""
        self._waiting.append((function, args))
        if not self._woken:
            self._woken = True
            self.wakeups += 1
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        """On the front's loop. Cleared before the queue is emptied: an answer put after the last
        pop finds `_woken` false and wakes the loop again."""
        self._woken = False
        waiting = self._waiting
        while waiting:
            function, args = waiting.popleft()
            function(*args)


def http_response(status: int, payload: bytes, keep: bool, extra_headers: Optional[list] = None) -> bytes:
    head = [f"HTTP/1.1 {status} {STATUS.get(status, 'Error')}", "Content-Type: application/json",
            f"Content-Length: {len(payload)}", "Connection: " + ("keep-alive" if keep else "close")]
    head += [f"{name}: {value}" for name, value in extra_headers or ()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


class ClientSocket:
    """A kept-alive connection's socket, as the thread that answers a request (the poll loop, the
    clerk) writes to it. Its own duplicate of the descriptor: asyncio may close its own at any moment
    (a reset), and a number reused by another socket must never receive an answer. Written only under
    `lock`, never once `closed` (set by the front, which then closes the duplicate)."""

    __slots__ = ("writer", "lock", "fd", "closed", "outstanding")

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.lock = threading.Lock()
        sock = writer.get_extra_info("socket")
        try:
            self.fd = os.dup(sock.fileno()) if sock is not None else -1
        except OSError:  # out of descriptors: this connection's answers go through the front, as before
            self.fd = -1
        self.closed = self.fd < 0
        self.outstanding: Optional[DirectAnswer] = None  # the front's: the answer its client waits for

    def writable(self) -> bool:
        """The front, before handing a request over: nothing of an earlier answer still in asyncio's
        buffer (bytes written past it would overtake it)."""
        return not self.closed and self.writer.transport.get_write_buffer_size() == 0

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)


class DirectAnswer:
    """One handed-over request's answer, written to the client's socket by the thread that gives it:
    a non-blocking send that wakes no other thread (the front woke for every answer: a self-pipe
    write that handed it the interpreter, which the loop then waited to get back; a what-if now costs
    the worker about 0.67x the CPU, a recorded score's cost is kafka-python's: BENCHMARKS.md). The
    front steps in only when it must, and is then woken through `Replies`: an answer that closes the
    connection (5xx), a socket that took less than the whole answer, or the client's next request
    already read (pipelined: answers keep their order).
    The deadline is the front's sweep (`ScoreServer._sweep`): one timer for all, not one each."""

    __slots__ = ("server", "client", "mode", "started", "deadline", "event_id", "done", "written", "waiter")

    def __init__(self, server: "ScoreServer", client: ClientSocket, mode: str, started: float, deadline: float,
                 event_id):
        self.server, self.client, self.mode, self.started = server, client, mode, started
        self.deadline, self.event_id = deadline, event_id
        self.done = False     # answered (under the client's lock): a second answer is dropped
        self.written = False  # its bytes are on the socket, or in asyncio's buffer before any later ones
        self.waiter: Optional[asyncio.Future] = None  # the front waits for `written` (a pipelined request)

    def settle(self, status: int, body: dict, reason: Optional[str] = None) -> None:
        """Any thread, once per request (a later call is dropped): count it (and `reason`, an error
        the desk did not count), then write it."""
        keep = status < 500 and status != 413
        data = http_response(status, encode(body), keep)
        client = self.client
        with client.lock:
            if self.done:
                return
            self.done = True
            if reason is not None:
                self.server.metrics.errors.labels(reason).inc()
            self.server.count(self.mode, status, self.started)  # before it leaves: whoever reads it sees it counted
            if client.closed:
                self.written = True  # the client left: nothing to tell it
                return
            if keep and self.waiter is None:
                try:
                    sent = os.write(client.fd, data)
                except BlockingIOError:
                    sent = 0
                except OSError:  # the client left (reset, broken pipe): the front sees its connection end
                    self.written = True
                    return
                if sent == len(data):
                    self.written = True
                    return
                data = data[sent:]
        replies = self.server.replies
        assert replies is not None
        replies.call(self._write_on_front, data, keep)

    def _write_on_front(self, data: bytes, keep: bool) -> None:
        """On the front's loop: the rest of the answer through asyncio, which waits for the socket."""
        writer = self.client.writer
        if not writer.is_closing():
            writer.write(data)
            if not keep:
                writer.close()
        self.written = True
        if self.waiter is not None:
            _settle(self.waiter, True)


class EngineGate:
    """Who may read the engines and the desk's waiting requests: the poll loop, which holds
    the gate, except while it waits in ``consumer.poll`` (`opened`); then the desk's clerk may
    take it to answer requests at once instead of after the poll's timeout.

    The rebalance callbacks run while the loop is blocked in a consumer call (kafka-python's
    in a thread of their own, stream/rebalance_listener.py; librdkafka's on the loop's thread):
    in ``poll`` (the gate is open: they take it, so never beside a clerk) or in ``close`` (the
    loop holds the gate and waits for them: they must not take it). `callback` does the right one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = False    # the loop waits in poll and holds nothing
        self.wanted = False  # the loop's poll returned: a clerk holding the gate hands it back soon
        self.openings = 0    # polls so far, and when the latest began: the clerk waits out a short one
        self.opened_at = 0.0
        self.on_open: Optional[Callable[[], None]] = None  # the desk: ring the clerk if requests wait

    def hold(self) -> None:
        """The loop starts: from now on it holds the gate except in `opened`."""
        self.lock.acquire()

    def release(self) -> None:
        """The loop ended (after its consumer closed)."""
        self.lock.release()

    @contextmanager
    def opened(self) -> Iterator[None]:
        self.openings += 1
        self.opened_at = time.monotonic()
        self.open = True
        self.lock.release()
        if self.on_open is not None:
            self.on_open()
        try:
            yield
        finally:
            self.wanted = True
            self.lock.acquire()  # waits for the clerk's answer in progress, a few hundred microseconds
            self.wanted = self.open = False

    @contextmanager
    def callback(self) -> Iterator[None]:
        if self.open:
            with self.lock:
                yield
        else:
            yield


class ScoreDesk:
    """Where the HTTP front and the poll loop meet. The front calls `submit` and reads
    `owned` and `clock`; whoever holds the `gate` calls `drain` (the loop after each poll and
    between events when `has_mail`; the clerk while the loop waits in poll); the loop calls
    `processed` for each record while requests wait (`awaited` is non-empty)."""

    def __init__(self, topic: str, address: str, name: str, max_pending: int = 4096,
                 max_future_skew: float = MAX_FUTURE_SKEW, recorded: str = "processed",
                 signing_key: Optional[bytes] = None):
        self.topic = topic
        self.signing_key = signing_key   # signs what a recorded score answered when written carries
        # --serve-recorded written: a recorded score is computed at once and answered once its event is
        # written (`write_served`, the front's producer); "processed": answered when the loop processed it
        self.answers_when_written = recorded == "written"
        self.write_served: Optional[Callable] = None
        # (partition, event id) -> (user id, answer) of the scores written lately: a repeat is answered the
        # same, not written again, until the loop handled the id (then the engine's dedupe window answers
        # what was recorded) or `SERVED_KEPT_SECONDS` passed
        self.served_lately: collections.OrderedDict = collections.OrderedDict()
        self.address = address  # where other workers forward this worker's partitions' requests
        self.name = name
        self.max_future_skew = max_future_skew  # the worker's --max-future-skew: the front refuses it at once
        self.owners = Owners()
        self.assignor = OwnersAssignor(address, self.owners)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.max_pending = max_pending
        self.submitted = 0                    # written by the front only
        self.answered = 0                     # written under the gate only (so neither count loses an update)
        # (partition, event id) -> tickets waiting for that event (under the gate): an id is unique per
        # partition only (the engine's duplicates), so another partition's event never answers them
        self.awaited: dict[tuple[int, Union[int, str]], list] = {}
        self.owned: frozenset = frozenset()   # the loop's partitions, for the front
        self.clock: dict[int, float] = {}     # partition -> its latest event time, for the front
        self.metrics: Optional[ServeMetrics] = None
        self.stopped = False
        self.gate = EngineGate()
        self.gate.on_open = self._ring_if_mail
        # partition -> the deadline of its oldest recorded request still waiting (published by the loop's
        # sweep, read by the front): a partition whose requests wait past half their time is behind
        self.oldest_deadline: dict[int, float] = {}
        self.clerk_drains = 0                 # drains done by the clerk while the loop waited in poll
        # Requests answered now (what-ifs, and recorded ones answered when written) handed in (by the front)
        # and taken (under the gate): only they ring the clerk. A recorded request answered when processed
        # needs no clerk: the loop books it after its poll, before that poll's records.
        self.ringing_submitted = 0
        self.ringing_taken = 0
        self._doorbell = threading.Event()
        self._clerk: Optional[threading.Thread] = None
        self._last_sweep = 0.0

    # -- the front's side ------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self.submitted - self.answered

    def submit(self, ticket: Ticket) -> bool:
        if self.pending >= self.max_pending or self.stopped:
            return False
        self.submitted += 1
        self.inbox.put(ticket)
        # A what-if: the clerk answers it if the loop waits in poll; a loop at work drains it between two
        # events itself (ringing then would only make the clerk compete with it for the interpreter). The
        # gate rings when it opens with what-ifs waiting, so one put just before is not left behind.
        # A recorded request answered when processed never rings: it cannot be answered before its event
        # comes back through the loop's poll, and the loop books it when that poll returns (a clerk woken for
        # it would only take the interpreter from the loop and the front: +8 ms at p50 on an idle stream,
        # BENCHMARKS.md). Answered when written, it is scored at once, like a what-if.
        if ticket.whatif or self.answers_when_written:
            self.ringing_submitted += 1
            if self.gate.open:
                self._doorbell.set()
        return True

    # -- the clerk: answers while the loop waits in poll ---------------------------------------

    def start_clerk(self, partitions: Callable[[], dict]) -> None:
        """Called by the loop once it holds the gate; `partitions` gives its owned partitions."""
        if self._clerk is None:
            self._clerk = threading.Thread(target=self._clerk_run, args=(partitions,), name="score-clerk",
                                           daemon=True)
            self._clerk.start()

    def _clerk_run(self, partitions: Callable[[], dict]) -> None:
        while not self.stopped:
            self._doorbell.wait()
            self._doorbell.clear()  # before the drain: a request arriving during it rings again
            gate = self.gate
            opening, waited = gate.openings, time.monotonic() - gate.opened_at
            if gate.open and waited < CLERK_GRACE:
                # A busy loop's poll returns at once with buffered records: leave those requests to the
                # loop rather than make it wait for the clerk (on a crowded machine, for the scheduler).
                time.sleep(CLERK_GRACE - waited)
                if gate.openings != opening:
                    continue  # the loop came back (it drains), or polls again (and rang if requests wait)
            # Never wait for the gate: if the loop holds it, the loop drains the desk itself (after its
            # poll, between two events, or by ringing again when it opens the gate with requests waiting).
            if not gate.open or not gate.lock.acquire(blocking=False):
                continue
            try:
                if not self.stopped and not self.inbox.empty():
                    self.clerk_drains += 1
                    self.drain(partitions(), clerk=True)
            finally:
                self.gate.lock.release()

    def _ring_if_mail(self) -> None:
        if self.ringing_submitted != self.ringing_taken:
            self._doorbell.set()

    # -- under the gate (the loop, or the clerk) ----------------------------------------------

    def has_mail(self) -> bool:
        """A request waits to be taken in (cheap: the loop asks between two events)."""
        return not self.inbox.empty()

    def drain(self, partitions: dict, clerk: bool = False) -> None:
        """Under the gate (after a poll, before its records; between two events; or by the
        clerk while the loop waits in poll): take the new requests (recorded ones wait for their
        event; what-ifs are answered now) and let go of requests whose partition left. The
        clerk stops as soon as the loop's poll returned: the loop takes the rest."""
        owned = frozenset(tp.partition for tp in partitions)
        if owned != self.owned:
            self.owned = owned
            self._release(lambda ticket: ticket.partition not in owned, 503, "partition_moved",
                          "the partition moved to another worker while this request waited: send it again with "
                          "the same event_id (it is scored once)")
        self.clock = {tp.partition: state.engine.joiner.max_time for tp, state in partitions.items()}
        while not (clerk and self.gate.wanted):
            try:
                ticket = self.inbox.get_nowait()
            except queue.Empty:
                break
            if ticket.whatif or self.answers_when_written:
                self.ringing_taken += 1
            state = partitions.get(TopicPartition(self.topic, ticket.partition))
            if state is None:
                self._refuse(ticket, 503, "partition_moved", f"partition {ticket.partition} is not served here any "
                             "more: send the request again", partition=ticket.partition)
            elif ticket.whatif:
                self._what_if(ticket, state)
            elif self.answers_when_written:
                self._serve_written(ticket, state)
            else:
                self.awaited.setdefault((ticket.partition, ticket.event.event_id), []).append(ticket)
        now = time.monotonic()
        if self.awaited and now - self._last_sweep >= SWEEP_AWAITED_SECONDS:
            self._last_sweep = now
            self._release(lambda ticket: ticket.deadline < now, 504, None, "")   # the front answered these 504
            oldest: dict[int, float] = {}
            for tickets in self.awaited.values():
                for ticket in tickets:
                    if ticket.deadline < oldest.get(ticket.partition, float("inf")):
                        oldest[ticket.partition] = ticket.deadline
            self.oldest_deadline = oldest
        elif not self.awaited and self.oldest_deadline:
            self.oldest_deadline = {}

    def processed(self, state, record, event: Event, score: Optional[float]) -> None:
        """The loop handled `event` (a shop's or a request's): answer who waited for its id."""
        tickets = self._waiting_for(record.partition, event)
        if not tickets:
            return
        engine = state.engine
        if score is not None:
            answer = self._recorded(event, record.partition, record.offset, score, engine.champion_slot)
            status = 200
        else:
            _, earlier = engine.recorded(event.event_id, event.user_id)
            if earlier is not None:  # scored before (a retry, or the shop's tracking sent it first)
                answer = self._recorded(event, record.partition, None, earlier, duplicate=True)
                status = 200
            else:
                status, answer = 409, {"error": f"not scored: event_time {event.event_time} is behind partition "
                                       f"{record.partition}'s watermark (a late event opens no prediction)",
                                       "reason": "late_event", "partition": record.partition}
        for ticket in tickets:
            if status != 200 and self.metrics is not None:
                self.metrics.errors.labels(answer["reason"]).inc()
            self.answered += 1
            ticket.answer(status, answer)

    def dead_lettered(self, record, event: Event, reason: str) -> None:
        """The loop dead-lettered `event` (its record decoded): who waited for it is answered now, not
        at its deadline (the partition would look behind meanwhile)."""
        for ticket in self._waiting_for(record.partition, event):
            self._refuse(ticket, 400, "invalid_value", f"the worker refused the event: {reason}",
                         partition=record.partition)

    def _waiting_for(self, partition: int, event: Event) -> list:
        """Takes out the tickets waiting for `event`: same partition, event id and user (a same id sent
        for another user leaves them waiting for their own)."""
        if event.event_id is None:
            return []
        key = (partition, event.event_id)
        tickets = self.awaited.get(key)
        if not tickets:
            return []
        mine = [ticket for ticket in tickets if ticket.event.user_id == event.user_id]
        others = [ticket for ticket in tickets if ticket.event.user_id != event.user_id]
        if others:
            self.awaited[key] = others
        else:
            del self.awaited[key]
        return mine

    def close(self) -> None:
        """The worker stops: nobody will process what waits. Called by the loop, holding the gate."""
        self.stopped = True
        self._doorbell.set()  # the clerk wakes, sees `stopped` and ends
        self._release(lambda ticket: True, 503, "stopping", "the worker is stopping: send the request again")
        while True:
            try:
                ticket = self.inbox.get_nowait()
            except queue.Empty:
                break
            self._refuse(ticket, 503, "stopping", "the worker is stopping: send the request again")

    def _what_if(self, ticket: Ticket, state) -> None:
        engine = state.engine
        event = ticket.event
        sessions = getattr(engine.features, "sessions", None)
        if sessions is not None and event.user_session not in sessions:
            self._refuse(ticket, 404, "unknown_session", f"user_session {event.user_session!r}: no live state on "
                         f"partition {ticket.partition} (never seen, or forgotten): nothing to score it with",
                         partition=ticket.partition)
            return
        try:
            models = engine.what_if(event)
        except Exception as exc:  # a model that cannot take these features: the request fails, not the loop
            self._refuse(ticket, 400, "invalid_value", f"the models cannot score this request: "
                         f"{type(exc).__name__}: {exc}")
            return
        champion = models[engine.champion]
        self.answered += 1
        ticket.answer(200, {"score": champion[3], "model": champion[0], "version": champion[2],
                            "partition": ticket.partition, "recorded": False, "event_time": event.event_time,
                            "served_by": self.name,
                            "models": [{"model": m, "role": r, "version": v, "score": p} for m, r, v, p in models]})

    def _serve_written(self, ticket: Ticket, state) -> None:
        """--serve-recorded written: score `ticket` now (`Engine.serve`), write its event carrying the
        score (`write_served`), and answer "written" (not "recorded") when the write is acknowledged.
        An event id this partition handled is answered with what was recorded (its score, or 409
        late_event); one served lately that the loop has not reached yet, as it was answered then; neither
        is written again."""
        engine, event, partition = state.engine, ticket.event, ticket.partition
        key = (partition, event.event_id)
        # The engine first: once the loop has handled the id, what was recorded is known, and is the answer.
        seen, earlier = engine.recorded(event.event_id, event.user_id)
        if seen:
            if earlier is None:
                self._refuse(ticket, 409, "late_event", f"not scored: event {event.event_id!r} was handled on "
                             f"partition {partition} and opened no prediction", partition=partition)
            else:
                self.answered += 1
                ticket.answer(200, self._recorded(event, partition, None, earlier, duplicate=True))
            return
        lately = self.served_lately.get(key)
        if lately is not None and lately[0] == event.user_id and not lately[3]:   # [3]: its write failed
            self.answered += 1
            ticket.answer(200, {**lately[1], "duplicate": True, "offset": None})
            return
        if engine.joiner.is_late(event.event_time):
            self._refuse(ticket, 409, "late_event", f"not scored: event_time {event.event_time} is behind partition "
                         f"{partition}'s watermark (a late event opens no prediction)", partition=partition)
            return
        try:
            served = engine.serve(event)
            header = encode_served(served)
            decode_served(header)   # what the worker will read: refused here, not dead-lettered after answering
        except Exception as exc:  # a model that cannot take these features: the request fails, not the loop
            self._refuse(ticket, 400, "invalid_value", f"the models cannot score this request: "
                         f"{type(exc).__name__}: {exc}")
            return
        _, outputs, champion = served
        p_true, y_pred = outputs[champion]
        answer = self._recorded(event, partition, None, p_true if y_pred is not None else None, engine.slots[champion])
        # Written, not recorded: the check above reads the watermark as processed so far, and the events
        # ahead of the record can still move it past the event (then the loop finds it late), or the shop's
        # tracking copy of the id can come first. Only the loop knows; a repeat of the id then says what it did.
        answer.update(recorded=False, written=True)
        failed = self._keep_served(key, event.user_id, answer)
        self.answered += 1   # no longer waits for the loop: the producer's acknowledgement answers it
        assert self.write_served is not None   # set by the server that serves this desk

        def settle(status: int, body: dict) -> None:   # on the producer's thread
            if status != 200:   # not written: a repeat must not be answered "written" from the copy kept
                failed.append(status)
            ticket.answer(status, body)

        self.write_served(event, partition, header, answer, settle)

    def _recorded(self, event: Event, partition: int, offset: Optional[int], score: Optional[float], slot=None,
                  duplicate: bool = False) -> dict:
        """A recorded score's answer: `slot` made it (None: an earlier copy of the event did)."""
        return {"event_id": event.event_id, "prediction_id": event.event_id, "partition": partition, "offset": offset,
                "recorded": True, "duplicate": duplicate, "served_by": self.name, "score": score,
                "model": slot.name if slot is not None else None,
                "version": slot.version if slot is not None else None}

    def _keep_served(self, key: tuple, user_id, answer: dict) -> list:
        """Keep `answer` for a repeat of its event id; returns the list its write's failure is put in (a
        list: appended on the producer's thread, read under the gate, no lock needed)."""
        lately = self.served_lately
        failed: list = []
        lately[key] = (user_id, answer, time.monotonic(), failed)
        oldest = time.monotonic() - SERVED_KEPT_SECONDS
        while lately and (len(lately) > SERVED_KEPT or next(iter(lately.values()))[2] < oldest):
            lately.popitem(last=False)
        return failed

    def _refuse(self, ticket: Ticket, status: int, reason: str, message: str, **extra) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(reason).inc()
        self.answered += 1
        ticket.answer(status, {"error": message, "reason": reason, **extra})

    def _release(self, which: Callable[[Ticket], bool], status: int, reason: Optional[str], message: str) -> None:
        for key in list(self.awaited):
            tickets = self.awaited[key]
            keep = [t for t in tickets if not which(t)]
            for ticket in tickets:
                if not which(ticket):
                    continue
                if reason is None:  # timed out: the front already answered and counted it
                    self.answered += 1
                else:
                    self._refuse(ticket, status, reason, message, partition=ticket.partition)
            if keep:
                self.awaited[key] = keep
            else:
                del self.awaited[key]


def advertised_address(settings: ServeSettings, port: int) -> str:
    """HOST:PORT other workers reach this one at: --serve-advertise, else the bound host, else
    (bound to every interface) this machine's address as its own name resolves."""
    if settings.advertise:
        return settings.advertise
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = socket.gethostname()
    return f"{host}:{port}"


#: Descriptors a worker keeps for itself beside the API's connections (Kafka clients, checkpoint
#: files and their forked writers, the metrics server, logs).
FD_RESERVE = 256


def connection_limit(wanted: int, reserve: int = FD_RESERVE) -> int:
    """`wanted` open connections, or as many as the process's descriptors hold: each takes two
    (asyncio's socket and the answering thread's duplicate, `ClientSocket`), and `reserve` stay
    the worker's own (out of descriptors, a checkpoint cannot open its file). Raises the soft
    limit to the hard one first, as Go and the JVM do at start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or 2 * wanted + reserve <= soft:
        return wanted
    limit = max(1, (soft - reserve) // 2)
    log.warning("scoring API: at most %d open connections, not %d: this process may open %d descriptors "
                "(ulimit -n), each connection takes two and the worker keeps %d", limit, wanted, soft, reserve)
    return limit


class ScoreServer:
    """The HTTP front on its own thread. Bound at construction (a port in use fails before
    the worker joins its group); `start(desk, producer, registry)` serves."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.socket = socket.create_server((settings.host, settings.port), backlog=1024)
        self.port = self.socket.getsockname()[1]
        self.address = advertised_address(settings, self.port)
        self.open_connections = 0
        self.max_connections = connection_limit(settings.max_connections)
        self._writers: set = set()
        self._token = settings.token.reveal().encode() if settings.token is not None else None
        self._thread = threading.Thread(target=self._run, name="score-api", daemon=True)
        self._ready = threading.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self.replies: Optional[Replies] = None
        self._direct: set = set()  # answers written by the loop's thread, not yet given: the sweep's

    def start(self, desk: ScoreDesk, producer, registry: CollectorRegistry) -> "ScoreServer":
        self.desk = desk
        self.producer = producer
        self.metrics = desk.metrics = ServeMetrics(registry)
        desk.write_served = self._write_served
        producer.partitions_for(desk.topic)  # metadata now: a send on the front's loop must never wait for it
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self.socket.close()
        producer = getattr(self, "producer", None)
        if producer is not None:   # after the front: no send comes after this
            try:
                producer.close(5)
            except Exception as exc:   # a broker away: what is unsent was answered 503 already
                log.warning("closing the scoring API's producer: %s: %s", type(exc).__name__, exc)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.replies = Replies(self._loop)
        server = await asyncio.start_server(self._connection, sock=self.socket, limit=MAX_HEADERS)
        sweep = asyncio.create_task(self._sweep())
        self._ready.set()
        async with server:
            await self._stop.wait()
            sweep.cancel()
            for writer in list(self._writers):  # idle keep-alive connections: no need to wait for them
                writer.close()

    def count(self, mode: str, status: int, started: float) -> None:
        """Any thread: one answered request, counted before it leaves."""
        self.metrics.requests.labels(mode, str(status)).inc()
        self.metrics.seconds.labels(mode).observe(time.perf_counter() - started)

    async def _sweep(self) -> None:
        """Answers 504 the handed-over requests whose deadline passed: one timer for all of them (a
        timer each, set on the front and never cancelled by the thread that answers, woke the front
        once per request)."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for answer in list(self._direct):
                if answer.done:
                    self._direct.discard(answer)
                elif answer.deadline <= now:
                    self._direct.discard(answer)
                    answer.settle(504, _timed_out(answer.event_id, self.settings.timeout), "timeout")

    # -- one connection: requests in order, keep-alive, every read with a deadline ---------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        timeout = self.settings.timeout
        if self.open_connections >= self.max_connections:
            error = RequestError(429, "too_many_connections", f"more than {self.max_connections} open "
                                 "connections: close idle ones, or retry in a moment")
            await self._reply(writer, error.status, error_body(error), False, error.reason)
            writer.close()
            return
        self.open_connections += 1
        self._writers.add(writer)
        client = ClientSocket(writer)
        served = 0
        try:
            while True:
                try:
                    first = await asyncio.wait_for(reader.readexactly(1), KEEPALIVE_IDLE if served else timeout)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except TimeoutError:
                    if not served:  # connected and said nothing: a slow client
                        await self._fail(writer, RequestError(408, "slow_client", f"no request within {timeout:g} s"))
                    return  # an idle keep-alive connection: closed quietly
                started = time.perf_counter()
                await self._previous_written(client)  # a pipelined request: its answer after the one before
                try:
                    request = await self._read_request(reader, writer, first, timeout)
                except RequestError as error:
                    await self._fail(writer, error)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, path, query, version, headers, body = request
                mode = PATHS.get(path, "other")
                keep_asked = _keep_alive_asked(version, headers)
                direct = (client, started) if keep_asked and client.writable() else None
                try:
                    routed = await self._route(method, path, query, headers, body, direct)
                    if routed is None:  # handed over: the answer goes out from the thread that gives it
                        served += 1
                        continue
                    status, payload, extra_headers = routed
                except RequestError as error:
                    extra_headers = _retry_after(error)
                    status, payload = error.status, error_body(error)
                    self.metrics.errors.labels(error.reason).inc()
                keep = keep_asked and status < 500 and status != 413
                if mode != "other":  # counted before the answer leaves: whoever reads it sees it counted
                    self.count(mode, status, started)
                await self._reply(writer, status, payload, keep, None, extra_headers)
                served += 1
                if not keep:
                    return
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            client.close()
            writer.close()

    async def _previous_written(self, client: ClientSocket) -> None:
        """Wait until the connection's handed-over answer is written (at once, unless the client
        sent its next request before reading the answer to the last)."""
        answer = client.outstanding
        if answer is None:
            return
        with client.lock:
            if not answer.written and answer.waiter is None:
                answer.waiter = asyncio.get_running_loop().create_future()
        if not answer.written and answer.waiter is not None:
            await answer.waiter
        client.outstanding = None

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes,
                            timeout: float):
        """(method, path, query, version, headers, body), or a RequestError (its `mode` set once the path is
        known). A request is framed one way only (RFC 9112, against request smuggling): lines end in CRLF,
        one Content-Length of ASCII digits, no Transfer-Encoding; a body is read whatever the method, so it
        is never taken for the next request. A client that asks `Expect: 100-continue` is told to send its
        body (it waited for that, then timed out as a slow client); any other expectation is refused (417)."""
        try:
            async with asyncio.timeout(timeout):  # one deadline for the whole head, however it trickles in
                lines = await _read_head(reader, first)
        except TimeoutError:
            raise RequestError(408, "slow_client", f"request headers not received within {timeout:g} s") from None
        except asyncio.LimitOverrunError:  # one line over the reader's limit
            raise _headers_too_large() from None
        request_line = lines[0] if lines else ""
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise RequestError(400, "bad_request_line", f"not an HTTP/1.x request line: {request_line[:100]!r}")
        method, target, version = parts
        split = urlsplit(target)
        try:
            headers = _parse_headers(lines[1:])
            length = self._content_length(method, headers)
            expect = headers.get("expect")
            if expect is not None:
                if expect.lower() != "100-continue":
                    raise RequestError(417, "expectation_failed", f"Expect {expect[:40]!r}: only 100-continue "
                                       "is understood")
                if length and version == "HTTP/1.1":   # (RFC 9110 10.1.1: an HTTP/1.0 client's is ignored)
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                async with asyncio.timeout(timeout):
                    body = await reader.readexactly(length)
            except TimeoutError:
                raise RequestError(408, "slow_client", f"body of {length} bytes not received within "
                                   f"{timeout:g} s") from None
        except RequestError as error:
            error.mode = PATHS.get(split.path)
            raise
        return method, split.path, split.query, version, headers, body

    def _content_length(self, method: str, headers: dict) -> int:
        length_text = headers.get("content-length")
        if length_text is None:
            if method == "POST":
                raise RequestError(411, "length_required", "a Content-Length header is required")
            return 0
        # isdigit() alone takes "²" (which int() refuses), and int() of thousands of digits raises
        if not (length_text.isascii() and length_text.isdigit()) or len(length_text) > 10:
            raise RequestError(400, "bad_request_line", f"Content-Length {length_text[:40]!r} is not a byte "
                               "count (at most 10 ASCII digits)")
        length = int(length_text)
        if length > self.settings.max_body:
            raise RequestError(413, "body_too_large", f"body of {length} bytes exceeds the "
                               f"{self.settings.max_body}-byte limit")
        return length

    async def _fail(self, writer: asyncio.StreamWriter, error: RequestError) -> None:
        """A refusal before the request could be routed: answered, counted, and the connection closed
        (what follows on it may not be framed as the client meant)."""
        self.metrics.errors.labels(error.reason).inc()
        if error.mode is not None:  # the path was read: a request of that mode answered, like any other
            self.metrics.requests.labels(error.mode, str(error.status)).inc()
        await self._reply(writer, error.status, error_body(error), False, None)

    async def _reply(self, writer: asyncio.StreamWriter, status: int, payload: bytes, keep: bool,
                     count_reason: Optional[str], extra_headers: Optional[list] = None) -> None:
        if count_reason is not None:
            self.metrics.errors.labels(count_reason).inc()
        try:
            writer.write(http_response(status, payload, keep, extra_headers))
            await asyncio.wait_for(writer.drain(), self.settings.timeout)
        except (ConnectionError, TimeoutError):
            pass  # the client left: nothing to tell it

    # -- routing -----------------------------------------------------------------------------

    async def _route(self, method: str, path: str, query: str, headers: dict, body: bytes,
                     direct: Optional[tuple[ClientSocket, float]] = None):
        """(status, body, extra headers), or None: handed over with `direct` (the client's socket and
        when its request began), answered by whoever gives the answer (`DirectAnswer`)."""
        mode = PATHS.get(path)
        if mode is None:
            raise RequestError(404, "not_found", f"no {path[:100]!r} here: POST /score (recorded) or "
                               "POST /score/whatif (never recorded)")
        if method != "POST":
            raise RequestError(405, "method_not_allowed", f"{method[:20]} {path}: only POST", allow="POST")
        if query:
            raise RequestError(400, "unknown_field", f"query {query[:100]!r}: {path} takes no parameters (a score "
                               "that is never recorded is POST /score/whatif)")
        if self._token is not None:
            given = headers.get("authorization", "").encode("latin-1")
            if not hmac.compare_digest(given, b"Bearer " + self._token):
                raise RequestError(401, "unauthorized", "missing or wrong 'Authorization: Bearer <token>'")
        event, timed = decode_request(body, time.time(), self.settings.max_body, self.desk.max_future_skew)
        partitions = self.desk.owners.partitions or self._topic_partitions()
        partition = partition_for(str(event.user_id), partitions)
        if partition not in self.desk.owned:
            return await self._forward(partition, path, headers, body)
        if mode == "record":
            self._refuse_if_behind(partition)
        date_event(event, timed, self.desk.clock.get(partition))
        if direct is not None:
            self._hand_over_direct(event, partition, mode, *direct)
            return None
        status, answer = await self._hand_over(event, partition, mode == "whatif")
        return status, encode(answer), []

    def _refuse_if_behind(self, partition: int) -> None:
        """Shed load fast: when the partition's oldest waiting recorded request has used half its time,
        a new one would most likely time out after writing an event that is still scored later. It is
        refused at once instead (nothing written); a what-if is still answered now."""
        oldest = self.desk.oldest_deadline.get(partition)
        if oldest is None:
            return
        waited = self.settings.timeout - (oldest - time.monotonic())
        if waited > self.settings.timeout / 2:
            raise RequestError(503, "behind", f"partition {partition} is behind its stream: a recorded request has "
                               f"waited {waited:.1f} s here; retry in a moment, or ask /score/whatif (answered now, "
                               "not recorded)", partition=partition)

    def _topic_partitions(self) -> int:
        found = self.producer.partitions_for(self.desk.topic)
        if not found:
            raise RequestError(503, "kafka_unavailable", f"the partitions of {self.desk.topic} are not known yet")
        return len(found)

    def _submit(self, ticket: Ticket) -> None:
        # Queued before the event is written: it is taken in (by the loop or the clerk, under the gate)
        # before the loop handles the records of its next poll, so it cannot miss its own event.
        if self.desk.stopped:
            raise RequestError(503, "stopping", "the worker is stopping: send the request again")
        if not self.desk.submit(ticket):
            raise RequestError(429, "busy", f"{self.desk.max_pending} requests already wait for the worker: retry "
                               "in a moment")

    def _hand_over_direct(self, event: Event, partition: int, mode: str, client: ClientSocket,
                          started: float) -> None:
        """To the poll loop (and, for a recorded score, to the events topic first); the answer goes
        from the thread that gives it straight to the client's socket (`DirectAnswer`)."""
        deadline = time.monotonic() + self.settings.timeout
        answer = DirectAnswer(self, client, mode, started, deadline, event.event_id)
        self._submit(Ticket(event, partition, mode == "whatif", deadline, answer.settle))
        client.outstanding = answer
        self._direct.add(answer)
        if mode != "whatif" and not self.desk.answers_when_written:
            self._write_event(event, partition, answer.settle)

    async def _hand_over(self, event: Event, partition: int, whatif: bool) -> tuple[int, dict]:
        """To the poll loop (and, for a recorded score, to the events topic first); wait for its answer
        here (a request that closes its connection: the front writes the answer, then closes)."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future = loop.create_future()
        replies = self.replies
        assert replies is not None  # made with the loop that runs this

        def settle(status: int, body: dict) -> None:  # called on the poll loop's thread
            replies.put(answered, (status, body))

        deadline = time.monotonic() + self.settings.timeout
        self._submit(Ticket(event, partition, whatif, deadline, settle))
        if not whatif and not self.desk.answers_when_written:
            self._write_event(event, partition, settle)
        # One timer on the future itself (wait_for and shield would add a task and a future per request).
        timer = loop.call_later(self.settings.timeout, _settle, answered, None)
        try:
            answer = await answered
        finally:
            timer.cancel()
        if answer is None:
            error = _timed_out(event.event_id, self.settings.timeout)
            raise RequestError(504, "timeout", error["error"])
        return answer

    def _write_event(self, event: Event, partition: int, settle: Callable[[int, dict], None],
                     served: Optional[bytes] = None, written: Optional[Callable] = None) -> None:
        """The request's event to the events topic (with `served`: carrying its score, `written` called
        with the record's metadata once acknowledged); a failure answers 503."""
        def failed(exc) -> None:  # on the producer's thread; the ticket is let go when its deadline passes
            self.metrics.errors.labels("kafka_unavailable").inc()
            settle(503, {"error": f"the event could not be written to {self.desk.topic}: {type(exc).__name__}: "
                                  f"{exc}", "reason": "kafka_unavailable"})

        value = encode_event(event)
        headers = [("shopstream.origin", b"score-api")]
        if served is not None:
            headers += served_headers(value, served, self.desk.signing_key)
        try:
            future = self.producer.send(self.desk.topic, key=str(event.user_id).encode(), value=value,
                                        partition=partition, headers=headers)
        except Exception as exc:  # no buffer space, no metadata: refused before sending
            failed(exc)
            return
        future.add_errback(failed)
        if written is not None:
            future.add_callback(written)

    def _write_served(self, event: Event, partition: int, header: bytes, answer: dict,
                      settle: Callable[[int, dict], None]) -> None:
        """Under the gate (`ScoreDesk._serve_written`): the event and its served score to the events
        topic; `settle` answers 200 (written, not yet recorded) with the record's offset once the broker
        acknowledged it (on the producer's thread), or 503."""
        def written(metadata) -> None:
            settle(200, {**answer, "offset": getattr(metadata, "offset", None)})

        self._write_event(event, partition, settle, header, written)

    async def _forward(self, partition: int, path: str, headers: dict, body: bytes):
        """Another worker's partition: ask its owner once, or say where to ask."""
        owner = self.desk.owners.address(partition)
        if headers.get(FORWARDED) or not owner or owner == self.desk.address:
            if not owner:
                why, then = "its owner is not known here yet", "retry in a moment"
            elif owner == self.desk.address:
                why, then = "it is moving between workers", "retry in a moment"
            else:   # forwarded once already: never again (no loops while two workers' maps disagree)
                why, then = f"a forwarded request is not forwarded again; its owner is {owner}", "ask it directly"
            raise RequestError(503, "not_owner", f"partition {partition} is not served here ({why}): {then}",
                               partition=partition, owner=owner or None)
        host, _, port = owner.rpartition(":")
        extra = [f"{FORWARDED}: {self.desk.name}"]
        if "authorization" in headers:
            extra.append(f"Authorization: {headers['authorization']}")
        request = "\r\n".join([f"POST {path} HTTP/1.1", f"Host: {owner}", "Content-Type: application/json",
                               f"Content-Length: {len(body)}", "Connection: close", *extra]) + "\r\n\r\n"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), self.settings.timeout)
            try:
                writer.write(request.encode("latin-1") + body)
                raw = await asyncio.wait_for(reader.read(), self.settings.timeout + 1.0)  # to EOF: Connection: close
            finally:
                writer.close()
            head, _, payload = raw.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            self.metrics.forwarded.labels("failed").inc()
            raise RequestError(503, "owner_unreachable", f"partition {partition}'s owner {owner} did not answer "
                               f"({type(exc).__name__}): ask it directly, or retry", partition=partition,
                               owner=owner) from None
        self.metrics.forwarded.labels("answered").inc()
        return status, payload, [("X-Shopstream-Forwarded-To", owner)]


async def _read_head(reader: asyncio.StreamReader, first: bytes) -> list[str]:
    """The request line and header lines, up to the empty line. A line ending in a bare LF is refused
    at once (waiting for the CRLF that ends the head would end in a 408)."""
    line = first + await reader.readuntil(b"\n")
    lines: list[str] = []
    size = 0
    while True:
        size += len(line)
        if size > MAX_HEADERS:  # `readuntil`'s limit is per line
            raise _headers_too_large()
        if not line.endswith(b"\r\n"):
            raise RequestError(400, "bad_request_line", "lines must end in CRLF, not a bare LF")
        if line == b"\r\n":
            return lines
        lines.append(line[:-2].decode("latin-1"))
        line = await reader.readuntil(b"\n")


def _headers_too_large() -> RequestError:
    return RequestError(431, "headers_too_large", f"request headers exceed {MAX_HEADERS} bytes")


def _parse_headers(lines: list[str]) -> dict:
    """Header name (lower case) -> value. Refused: a line without a name or with blanks around it (an
    obsolete folded line, "Content-Length : 5"), a repeated Content-Length, any Transfer-Encoding: a
    proxy in front could frame such a request otherwise than this server does."""
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise RequestError(400, "bad_request_line", f"not a header line: {line[:100]!r}")
        name = name.lower()
        if name == "content-length" and name in headers:
            raise RequestError(400, "bad_request_line", "more than one Content-Length header")
        headers[name] = value.strip()
    if "transfer-encoding" in headers:
        raise RequestError(400, "bad_request_line", "Transfer-Encoding is not accepted (chunked bodies "
                           "neither): send the body with a Content-Length")
    return headers


def _keep_alive_asked(version: str, headers: dict) -> bool:
    """HTTP/1.1 keeps the connection unless the client says close; HTTP/1.0 only if it asks."""
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    return "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens


def _timed_out(event_id, timeout: float) -> dict:
    return {"error": f"not answered within {timeout:g} s; a recorded request may still be scored: send it again "
                     f"with event_id {event_id!r} to get its score once", "reason": "timeout"}


def _settle(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _retry_after(error: RequestError) -> list:
    headers = []
    if error.status in (429, 503):
        headers.append(("Retry-After", "1"))
    if "allow" in error.extra:
        headers.append(("Allow", error.extra.pop("allow")))
    return headers
