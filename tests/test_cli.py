"""The command line through click's CliRunner: run, ls, show, evaluate and their errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dcbench.cli import main
from dcbench.distilled import DistilledSet
from dcbench.protocol import PRESETS


@pytest.fixture(autouse=True)
def _quick_smoke(monkeypatch, quick_preset):
    monkeypatch.setitem(PRESETS._items, "smoke", quick_preset)


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_ls_lists_registries():
    out = _invoke("ls", "methods").output
    assert "full" in out and "random" in out and "[hard]" in out
    out = _invoke("ls", "datasets").output
    assert "digits" in out and "fashionmnist" in out and "tiny" not in out.split()
    assert "convnet" in _invoke("ls", "models").output
    assert "paper" in _invoke("ls", "presets").output
    assert "hard" in _invoke("ls", "evaluators").output


def test_run_prints_the_leaderboard_and_resumes(tmp_path):
    store = str(tmp_path / "store")
    args = ["run", "--methods", "random,full", "--datasets", "tiny", "--ipc", "1,2",
            "--eval-seeds", "0-1", "--store", store, "--device", "cpu"]  # fmt: skip
    first = _invoke(*args)
    assert first.exit_code == 0, first.output
    assert "6 evaluations run, 0 already in" in first.output
    assert (
        "| method" in first.output and "tiny ipc1" in first.output and "tiny ipc2" in first.output
    )
    table_rows = [line for line in first.output.splitlines() if line.startswith("| full")]
    assert table_rows and table_rows[0].count("(2)") == 2  # the full row fills both IPC columns
    second = _invoke(*args)
    assert "0 evaluations run, 6 already in" in second.output
    shown = _invoke("show", "--store", store)
    assert shown.exit_code == 0 and "| random" in shown.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--methods", "dm2"], "error: unknown method 'dm2'"),
        (["run", "--datasets", "cifar"], "did you mean"),
        (["run", "--ipc", "0", "--datasets", "tiny"], "ipc must be a positive integer"),
        (["run", "--ipc", "ten"], "expected integers"),
        (["run", "--preset", "papr"], "did you mean 'paper'"),
        (["show", "--store", "/nonexistent/store"], "no store at"),
    ],
)
def test_usage_errors_are_one_line_with_nonzero_exit(tmp_path, args, message):
    result = CliRunner().invoke(
        main, [*args, "--store", str(tmp_path / "s")] if args[0] == "run" else args
    )
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_evaluate_a_distilled_file_and_reject_a_corrupt_one(tmp_path, tiny):
    idx = [int(i[0]) for i in tiny.class_indices]
    path = tmp_path / "set.safetensors"
    DistilledSet(tiny.normalize(tiny.train_images[idx]), tiny.train_labels[idx],
                 meta={"dataset": "tiny"}).save(path)  # fmt: skip
    result = _invoke(
        "evaluate", str(path), "--preset", "smoke", "--eval-seeds", "0", "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    assert "4 images, dataset tiny" in result.output and "convnet" in result.output
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["evaluate", str(bad)])
    assert result.exit_code == 2 and "not a dcbench distilled set" in result.output
    assert len(result.output.strip().splitlines()) == 1
