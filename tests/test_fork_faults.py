"""benchmarks/fork_faults.py and thread_faults.py measure what they say: a fork makes the parent's next writes fault."""

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.skipif(sys.platform != "linux", reason="fork and getrusage minor faults as on Linux")
def test_the_parent_faults_on_its_writes_while_a_forked_child_shares_its_heap():
    from fork_faults import measure

    rows = measure(state=3000, chunk=500, chunks=2, threads=1, events_per_second=1500, parts=True)
    assert [len(rows[phase]) for phase in ("before", "sharing", "after")] == [3, 2, 3]
    parts = rows["parts"]   # each right after a fork of its own: every part that writes old pages faults
    assert set(parts) == {"engine", "features", "label joiner", "model", "sessions: read", "sessions: recency",
                          "users: read", "products: read"}
    assert parts["engine"][1] > 0.5 and parts["features"][1] > 0 and parts["sessions: read"][1] > 0
    assert all(us > 0 for phase in ("before", "sharing", "after") for us, _ in rows[phase])
    # every event object was made before the fork: processing it writes its page at least
    assert rows["sharing"][0][1] > 0.1
    assert rows["rss_mib"] > 0 and rows["open_predictions"] > 0


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_thread_sampler_reads_every_thread_of_a_process_and_nothing_of_one_gone():
    import os
    import threading

    from thread_faults import threads_of

    stop = threading.Event()
    helper = threading.Thread(target=stop.wait, daemon=True)
    helper.start()
    try:
        rows = threads_of(os.getpid())
    finally:
        stop.set()
    assert str(threading.get_native_id()) in rows and str(helper.native_id) in rows
    name, faults, user, system = rows[str(threading.get_native_id())]
    assert name and faults > 0 and user >= 0 and system >= 0
    assert threads_of(2 ** 22 + 1) == {}   # above Linux's pid limit: never a process


@pytest.mark.skipif(sys.platform != "linux", reason="fork and wait4's rusage as on Linux")
def test_a_child_that_writes_the_checkpoint_payload_reports_its_own_work_and_faults():
    from fork_faults import measure

    rows = measure(state=3000, chunk=500, chunks=2, events_per_second=1500, child="pickle")
    child = rows["child"]
    # it ran dump_payload to its end (its time came back through the pipe) and copied pages it read
    assert child["work"] == "pickle" and child["work_s"] is not None and child["work_s"] > 0
    assert child["cpu_s"] > 0 and child["minor_faults"] > 100
    sleeping = measure(state=3000, chunk=500, chunks=2, events_per_second=1500)["child"]
    assert sleeping["work_s"] is None and sleeping["minor_faults"] < child["minor_faults"]


@pytest.mark.skipif(sys.platform != "linux", reason="fork and getrusage minor faults as on Linux")
def test_rows_of_objects_fault_on_more_pages_after_a_fork_than_the_same_numbers_in_columns():
    from table_layouts import measure

    rows = measure(rows=20_000, events=2000)
    assert set(rows) == {"objects", "columns"}
    objects, columns = rows["objects"]["sharing"][0][1], rows["columns"]["sharing"][0][1]
    # Here about 0.9 against 0.15: 2,000 random rows of six objects each span about as many pages, five
    # arrays of 20,000 numbers about two hundred. The margin leaves room for the faults of whatever else
    # runs in the process (in CI the columns' count came out 0.06 higher than alone).
    assert objects > 0.3 and objects > 2 * columns, (objects, columns)
