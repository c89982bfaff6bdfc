"""The bootstrap's holdout: the frozen copy that runs as a slot of the learner's engine
(`offline.bootstrap._add_frozen_slot`) scores exactly what a frozen engine of its own scored
(the deep copy the bootstrap ran before), and leaves the learner exactly as it was."""

import pickle

import pytest

import offline.bootstrap as ob
from offline.settings import EpochSettings
from shopstream.config import EngineConfig
from shopstream.events import event_from_record
from shopstream.generator import generate


@pytest.fixture(scope="module")
def events():
    return sorted((event_from_record(e) for e in generate(4000, seed=11, days=2.0)), key=lambda e: e.event_time)


def _run(events, monkeypatch, shared: bool, model="logreg", **config):
    with monkeypatch.context() as patch:
        if not shared:
            patch.setattr(ob, "_frozen_slot_fits", lambda engine: False)
        split = int(len(events) * 0.8)
        return ob.train_candidate(model, events, split, EngineConfig(**config), 42, 100,
                                  epochs=EpochSettings(epochs=2, patience=1))


def _state(result):
    engine = result.engine
    open_predictions = engine.joiner.open_predictions()
    return {
        "train": result.train, "holdout": result.holdout, "split_resolved": result.split_resolved,
        "training": result.training, "curve": result.curve.points, "counts": engine.counts,
        "joiner": engine.joiner.counts, "slots": [(s.name, s.role, s.learn) for s in engine.slots],
        "history": engine.history, "delays": (engine.label_delay_counts, engine.label_delay_sum),
        "open": [(p.key, p.event_time, p.x, tuple(p.outputs)) for p in open_predictions],
        "model": pickle.dumps(engine.champion_slot.model), "features": pickle.dumps(engine.features),
        "champion": (engine.champion_slot.scores.cumulative.values(), engine.champion_slot.scores.rolling.values()),
    }


@pytest.mark.parametrize("model", ["logreg", pytest.param("mlp", marks=pytest.mark.slow)])  # mlp: 4 s
def test_the_frozen_slot_scores_what_a_frozen_engine_scored(events, monkeypatch, model):
    split = int(len(events) * 0.8)
    probe = ob.Engine.fresh("logreg", "shop")
    for event in events[:split]:
        probe.process(event)
    assert probe.open_predictions > 20   # some of the holdout's labels resolve predictions made before it
    shared, apart = _run(events, monkeypatch, True, model), _run(events, monkeypatch, False, model)
    assert shared.holdout["resolved"] > 100 and shared.holdout["open_at_end"] > 0
    assert _state(shared) == _state(apart)


def test_predictions_open_at_the_split_are_scored_by_the_frozen_copy(events, monkeypatch):
    """A short window: many predictions open at the split resolve in the holdout (expired or
    bought), and the frozen copy scores the champion's recorded output for them."""
    shared, apart = _run(events, monkeypatch, True, window=60.0), _run(events, monkeypatch, False, window=60.0)
    assert _state(shared) == _state(apart)


def test_a_line_up_that_can_change_runs_a_frozen_engine_of_its_own(events, monkeypatch):
    calls = []
    monkeypatch.setattr(ob, "_add_frozen_slot", lambda engine: calls.append(engine))
    result = _run(events, monkeypatch, True, drift_reaction="challenger")
    assert not calls and result.holdout["resolved"] > 100


def test_without_the_dedupe_window_on_unique_ids_the_candidate_is_the_same(events, monkeypatch):
    """`unique_ids` (the bootstrap's: load_history dropped repeated ids) keeps no dedupe window;
    on events with distinct ids nothing else changes."""
    assert len({event.event_id for event in events}) == len(events)
    split = int(len(events) * 0.8)
    kept, skipped = (ob.train_candidate("logreg", events, split, EngineConfig(), 42, 100, unique_ids=unique)
                     for unique in (False, True))
    assert _state(skipped) == _state(kept)
    assert len(kept.engine._recent_ids) == len(events) and len(skipped.engine._recent_ids) == 0
    assert skipped.engine.deduplicates   # an engine as any other afterwards


def _history(path, seed=3, keep=lambda e: True):
    from shopstream.generator import write_jsonl

    write_jsonl((e for e in generate(1500, seed=seed, days=1.0) if keep(e)), path)
    return path


@pytest.mark.parametrize("case", ["holdout 0", "no purchases"])
def test_a_holdout_with_nothing_to_rank_chooses_no_default_and_says_n_a(case, tmp_path, capsys):
    """It picked a DEFAULT by a ROC AUC of nothing (-0.0000) and exited 0."""
    from cli.commands import main

    if case == "holdout 0":
        history, options, cause = _history(tmp_path / "h.jsonl"), ["--holdout", "0"], \
            "its holdout (0 events) has no resolved predictions"
    else:
        history, options, cause = _history(tmp_path / "h.jsonl", keep=lambda e: e["event_type"] != "purchase"), \
            [], "has only negative labels among its"
    out = tmp_path / "out"
    assert main(["bootstrap", "--history", str(history), "--out", str(out), "--model", "logreg", "--no-progress",
                 *options]) == 2
    [printed] = capsys.readouterr().err.strip().splitlines()
    assert printed.startswith(f"shopstream bootstrap: error: {history}: no DEFAULT chosen: ") and cause in printed
    assert not (out / "DEFAULT").exists()
    [row] = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| logreg |")][:1]
    assert row.split(" | ").count("n/a") >= 4 and "0.0000 | 0.0000" not in row   # precision .. roc_auc: nothing
    assert "default model: none chosen" in (out / "report.md").read_text()


def test_raw_text_features_the_model_cannot_take_are_counted_never_the_end_of_the_bootstrap(tmp_path, capsys):
    """With --features raw an event may carry text, which the logreg pipeline's scaler refuses. One
    such event in a numeric feature ("n/a") ended the bootstrap with a traceback; text in every row
    (a category) made a model that learned nothing, chosen as DEFAULT. Now an event the engine
    cannot take is counted and skipped, as a worker dead-letters it, and a model that learned none
    of its examples is never DEFAULT."""
    import json
    import random

    from cli.commands import main

    rng = random.Random(2)
    records = list(generate(1500, seed=3, days=1.0))
    for name, features in (("one_na", lambda i: {"f": "n/a" if i == 700 else rng.random()}),
                           ("all_text", lambda i: {"f": rng.random(), "color": "red"})):
        history = tmp_path / f"{name}.jsonl"
        history.write_text("".join(json.dumps({**r, "features": features(i)}) + "\n" for i, r in enumerate(records)))
        out = tmp_path / name
        code = main(["bootstrap", "--history", str(history), "--out", str(out), "--model", "logreg", "--features",
                     "raw", "--no-progress"])
        printed = capsys.readouterr()
        report = json.loads((out / "report.json").read_text())["candidates"]["logreg"]
        if name == "one_na":
            assert code == 0 and (out / "DEFAULT").exists()
            assert report["refused_events"] == {
                "engine error: TypeError: unsupported operand type(s) for -: 'str' and 'float'": 1}, report
            assert "1 events the engine refused" in printed.out
            assert "Events the engine refused" in (out / "report.md").read_text()
        else:
            assert code == 2 and not (out / "DEFAULT").exists()
            assert "no DEFAULT chosen: logreg learned none of its examples" in printed.err
            assert report["learn_errors"] > 0


def test_bad_rows_are_counted_by_kind_and_their_kinds_are_bounded(tmp_path):
    """A decoder's byte offset made each offset its own reason (20,000 rows with a raw tab in a value:
    thousands of reasons), and a key given twice is named in its reason: ever-new keys grew the
    report without bound. The whole reason of each stays in the examples."""
    import json

    good = json.dumps({"event_time": 1.77e9, "event_type": "view", "product_id": "p", "user_id": "u",
                       "user_session": "s"})
    lines = [good[:-1] + f', "brand": "{"x" * (i % 50)}\tb"}}' for i in range(300)]         # a tab at 50 offsets
    lines += [good[:-1] + f', "k{i}": 1, "k{i}": 2}}' for i in range(300)]                   # 300 keys twice
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(lines + [good]) + "\n")
    history = ob.load_history(path)
    assert len(history.events) == 1 and sum(history.malformed.values()) == 600
    assert history.malformed["payload: JSON is malformed: invalid character (byte N)"] == 300
    assert len(history.malformed) == ob.MAX_REASONS + 1 and history.malformed[ob.OTHER_REASONS] == 201
    assert "(byte " in history.examples[0] and "(byte N)" not in history.examples[0]


def test_default_is_written_last_and_the_report_whole_or_not_at_all(tmp_path, monkeypatch):
    """A run stopped while writing left DEFAULT on the new run and report.md on the previous one."""
    import offline.report

    out = tmp_path / "out"
    ob.bootstrap(_history(tmp_path / "a.jsonl"), out, progress=False)
    before = {name: (out / name).read_bytes() for name in ("DEFAULT", "report.json", "report.md",
                                                           "learning_curve.png")}

    def stop(*args, **kwargs):
        raise KeyboardInterrupt   # stopped while drawing the figure
    with monkeypatch.context() as patch:
        patch.setattr(offline.report, "plot_curves", stop)
        with pytest.raises(KeyboardInterrupt):
            ob.bootstrap(_history(tmp_path / "b.jsonl", seed=4), out, progress=False)
    assert {name: (out / name).read_bytes() for name in before} == before   # the previous run, whole
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".lock"]   # no scratch left

    seen = []
    set_default = ob.set_default
    monkeypatch.setattr(ob, "set_default", lambda *a: (seen.append((out / "report.md").read_text()), set_default(*a)))
    ob.bootstrap(tmp_path / "b.jsonl", out, progress=False)
    assert "b.jsonl" in seen[0]   # the report was this run's when DEFAULT moved to it


def test_a_second_bootstrap_into_one_directory_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "ab") as held:   # another bootstrap at work
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match=f"{out}: another bootstrap is writing into this directory"):
            ob.bootstrap(_history(tmp_path / "h.jsonl"), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_reading_a_history_shows_its_progress_when_asked(tmp_path, capsys):
    """Reading came before the training bar: a large history sat silent for minutes."""
    from shopstream.generator import write_jsonl

    path = tmp_path / "history.jsonl"
    write_jsonl(generate(500, seed=3), str(path))
    quiet = ob.load_history(path)
    assert capsys.readouterr().err == ""
    shown = ob.load_history(path, progress=True)
    err = capsys.readouterr().err
    assert "hashing history.jsonl" in err and "reading history.jsonl" in err and "500 rows" in err
    assert [e.event_id for e in shown.events] == [e.event_id for e in quiet.events] and shown.rows == 500
