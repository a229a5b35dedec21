"""Result store and runner: atomic records, reuse, resume after a kill, failures, bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dcbench.distilled import DistilledSet
from dcbench.errors import DcbenchError
from dcbench.method import METHODS, Method, register_method
from dcbench.protocol import PRESETS
from dcbench.runner import RunSpec, plan, run
from dcbench.store import ResultStore


@pytest.fixture(autouse=True)
def _quick_smoke(monkeypatch, quick_preset):
    """Run the runner's 'smoke' preset at test size (the preset table is data)."""
    monkeypatch.setitem(PRESETS._items, "smoke", quick_preset)


if "test-explode" not in METHODS:

    @register_method("test-explode")
    class _Explode(Method):
        """Fails at ipc 2 (tests only)."""

        def distill(self, data, ipc, config, *, seed, device, budget, progress=None, cache=None):
            if ipc == 2:
                raise RuntimeError("boom\nsecond line")
            idx = torch.cat([i[:ipc] for i in data.class_indices])
            return DistilledSet(data.normalize(data.train_images[idx]), data.train_labels[idx])

    @register_method("test-nan")
    class _Nan(Method):
        """Returns NaN images (tests only)."""

        def distill(self, data, ipc, config, *, seed, device, budget, progress=None, cache=None):
            c, h, w = data.info.image_shape
            n = ipc * data.info.num_classes
            labels = torch.arange(data.info.num_classes).repeat_interleave(ipc)
            return DistilledSet(torch.full((n, c, h, w), float("nan")), labels)


def _spec(**kw):
    base = dict(methods=["random", "full"], datasets=["tiny"], ipcs=[1, 2], eval_seeds=[0, 1],
                device="cpu")  # fmt: skip
    base.update(kw)
    return RunSpec(**base)


def _accuracies(store):
    return sorted(
        (r["method"], str(r["ipc"]), r["eval_seed"], r["metrics"]["accuracy"])
        for r in store.records()
    )


def test_run_writes_records_and_rerun_does_no_work(tmp_path):
    store = ResultStore(tmp_path / "s")
    first = run(_spec(), store)
    # random: 2 ipcs × 2 seeds; full: ipc-independent, 2 seeds
    assert (first.done, first.skipped, first.failed) == (6, 0, [])
    files = sorted(os.listdir(store.records_dir))
    assert len(files) == 6 and len(os.listdir(store.artifacts_dir)) == 3
    record = json.loads((store.records_dir / files[0]).read_text())
    assert record["status"] == "ok" and 0.0 <= record["metrics"]["accuracy"] <= 1.0
    assert {"distill_seconds", "eval_total_seconds", "stored_bytes"} <= set(record["cost"])
    assert record["env"]["torch_version"] == torch.__version__
    mtimes = {f: os.stat(store.records_dir / f).st_mtime_ns for f in files}
    second = run(_spec(), store)
    assert (second.done, second.skipped) == (0, 6)
    assert mtimes == {f: os.stat(store.records_dir / f).st_mtime_ns for f in files}


def test_same_spec_twice_gives_identical_accuracies(tmp_path):
    a, b = ResultStore(tmp_path / "a"), ResultStore(tmp_path / "b")
    run(_spec(), a)
    run(_spec(), b)
    assert _accuracies(a) == _accuracies(b)
    assert sorted(os.listdir(a.records_dir)) == sorted(os.listdir(b.records_dir))


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    store = ResultStore(tmp_path / "s")

    def kill_at_third_job(job, i, n):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(_spec(), store, on_job=kill_at_third_job)
    partial = _accuracies(store)
    assert len(partial) == 4  # full and random ipc1 finished before the kill
    resumed = run(_spec(), store)
    assert (resumed.done, resumed.skipped) == (2, 4)
    complete = _accuracies(store)
    assert len(complete) == 6 and set(partial) <= set(complete)
    fresh = ResultStore(tmp_path / "fresh")
    run(_spec(), fresh)
    assert complete == _accuracies(fresh)


def test_adding_seeds_runs_only_the_new_ones(tmp_path):
    store = ResultStore(tmp_path / "s")
    run(_spec(methods=["random"], ipcs=[1], eval_seeds=[0]), store)
    more = run(_spec(methods=["random"], ipcs=[1], eval_seeds=[0, 1, 2]), store)
    assert (more.done, more.skipped) == (2, 1)


def test_failed_jobs_are_recorded_and_do_not_stop_the_others(tmp_path):
    store = ResultStore(tmp_path / "s")
    summary = run(_spec(methods=["test-explode", "test-nan", "random"]), store)
    assert summary.done == 6  # test-explode ipc1 and random ipc 1, 2 (2 seeds each)
    assert len(summary.failed) == 3
    text = "\n".join(summary.failed)
    assert "test-explode/tiny/ipc2" in text and "RuntimeError: boom" in text
    assert "second line" not in text
    assert "NaN/inf" in text
    failed = [r for r in store.scan().records if r["status"] == "failed"]
    assert len(failed) == 6 and all(r["error"] for r in failed)
    # a rerun retries the failures (still failing) and redoes nothing that finished
    again = run(_spec(methods=["test-explode", "test-nan", "random"]), store)
    assert (again.done, again.skipped, len(again.failed)) == (0, 6, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ["randon"]}, "unknown method 'randon' (did you mean 'random'?)"),
        ({"datasets": ["tiy"]}, "unknown dataset 'tiy'"),
        ({"models": ["convnt"]}, "did you mean 'convnet'"),
        ({"preset": "fats"}, "did you mean 'fast'"),
        ({"ipcs": [0]}, "ipc must be a positive integer"),
        ({"ipcs": [49]}, "ipc 49 exceeds the smallest class of tiny (48 training images)"),
        ({"overrides": {"lr": "1"}}, "no method in this run has a setting 'lr'"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_bad_input_is_a_one_line_error_before_any_work(tmp_path, change, message):
    store = ResultStore(tmp_path / "s")
    with pytest.raises(DcbenchError) as err:
        spec = _spec(**change)
        plan(spec, store)
        run(spec, store)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not os.listdir(store.records_dir)


def test_unwritable_store_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DcbenchError, match="cannot create the store"):
        ResultStore(tmp_path / "file" / "store")
    # permission bits do not stop root (CI), so the access check itself is made to say no
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(DcbenchError, match="is not writable"):
        ResultStore(tmp_path / "ro")


def test_corrupt_and_newer_records_are_reported_not_fatal(tmp_path):
    store = ResultStore(tmp_path / "s")
    run(_spec(methods=["random"], ipcs=[1], eval_seeds=[0]), store)
    (store.records_dir / "bad.json").write_text("{not json")
    (store.records_dir / "new.json").write_text(json.dumps({"key": "new", "schema": 99}))
    scan = store.scan()
    assert len(scan.records) == 1
    assert any("bad.json" in p for p in scan.problems)
    assert any("schema 99" in p for p in scan.problems)


def test_sigkill_mid_run_then_rerun_matches_a_clean_run(tmp_path):
    """A real kill -9 of the CLI: finished records survive, no partial files, rerun completes."""
    import signal
    import subprocess
    import sys
    import time

    def cli(store):
        return [sys.executable, "-m", "dcbench.cli", "run", "--methods", "random,full",
                "--datasets", "tiny", "--ipc", "1,2,3", "--eval-seeds", "0", "--store", str(store),
                "--device", "cpu", "--no-progress"]  # fmt: skip

    def finished(folder):
        return {p.name: p.read_text() for p in folder.glob("*.json") if not p.name.startswith(".")}

    store = tmp_path / "killed"
    proc = subprocess.Popen(cli(store), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = store / "records"
    deadline = time.time() + 300
    while time.time() < deadline and not (records.is_dir() and finished(records)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    survived = finished(records)
    assert 1 <= len(survived) < 4, "the kill should land mid-run"
    subprocess.run(cli(store), check=True, capture_output=True)
    after = finished(records)
    assert len(after) == 4  # random × 3 ipcs + full, one seed
    assert all(after[name] == text for name, text in survived.items())  # nothing redone
    assert not ResultStore(store).scan().problems  # an interrupted write leaves only ignored .tmp
    clean = tmp_path / "clean"
    subprocess.run(cli(clean), check=True, capture_output=True)
    accs = {
        n: json.loads(t)["metrics"]["accuracy"] for n, t in after.items()
    }  # same keys, same numbers as an uninterrupted run
    assert accs == {
        n: json.loads(t)["metrics"]["accuracy"] for n, t in finished(clean / "records").items()
    }
