"""``dcbench check``: the CI regression gate against a committed baseline table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dcbench.cli import main
from dcbench.report import baseline_table, load_stores, read_baseline

STORE = str(Path(__file__).resolve().parent / "fixtures" / "store")


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def baseline(tmp_path) -> Path:
    path = tmp_path / "ci" / "baseline.csv"
    result = _invoke("check", "--store", STORE, "--write-baseline", str(path))
    assert result.exit_code == 0, result.output
    assert "wrote 6 baseline cells" in result.output
    return path


def _edit(path: Path, method: str, ipc: str, model: str, **values) -> None:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    row = (table["method"] == method) & (table["ipc"] == ipc) & (table["model"] == model)
    assert row.sum() == 1
    for column, value in values.items():
        table.loc[row, column] = str(value)
    table.to_csv(path, index=False)


def test_write_baseline_round_trip(baseline):
    table = pd.read_csv(baseline)
    assert list(table.columns[:7]) == ["method", "dataset", "ipc", "preset", "model", "mean", "std"]
    row = table[(table["method"] == "random") & (table["ipc"] == 1) & (table["model"] == "convnet")]
    assert row["mean"].item() == pytest.approx(65.7303)
    assert row["std"].item() == pytest.approx(1.236)
    assert table.loc[table["method"] == "full", "ipc"].isna().all()  # IPC-independent
    records = load_stores([STORE]).records
    expected = baseline_table(records)
    pd.testing.assert_frame_equal(
        read_baseline(baseline)[expected.columns].reset_index(drop=True),
        expected.reset_index(drop=True),
        check_dtype=False,
    )
    result = _invoke("check", "--store", STORE, "--baseline", str(baseline))
    assert result.exit_code == 0, result.output
    assert "check passed: 6 baseline cells within tolerance" in result.output


def test_a_regressed_cell_fails_and_is_named(baseline):
    _edit(baseline, "random", "1", "convnet", mean=70.0)  # store has 65.73; tolerance 3.71
    result = _invoke("check", "--store", STORE, "--baseline", str(baseline))
    assert result.exit_code == 1
    assert "regressed: random digits ipc 1 · convnet · hard · preset smoke" in result.output
    assert "70.00 → 65.73 (-4.27 points, tolerance 3.71)" in result.output
    assert "check failed: 1 of 6 baseline cells" in result.output


def test_a_drop_within_tolerance_passes(baseline):
    _edit(baseline, "random", "1", "convnet", mean=69.0)  # −3.27 < max(1, 3 × 1.236)
    assert _invoke("check", "--store", STORE, "--baseline", str(baseline)).exit_code == 0
    result = _invoke("check", "--store", STORE, "--baseline", str(baseline), "--tolerance", "3")
    assert result.exit_code == 1 and "tolerance 3.00" in result.output  # a fixed tolerance
    _edit(baseline, "random", "2", "convnet", mean=75.2, std=0.0)  # −0.93 < the 1-point floor
    result = _invoke("check", "--store", STORE, "--baseline", str(baseline), "--tolerance", "3.5")
    assert result.exit_code == 0, result.output


def test_missing_cells_fail(baseline):
    table = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    extra = table.iloc[[1]].assign(ipc="50")
    pd.concat([table, extra]).to_csv(baseline, index=False)
    result = _invoke("check", "--store", STORE, "--baseline", str(baseline))
    assert result.exit_code == 1
    assert "missing: random digits ipc 50" in result.output


def test_minimal_baseline_columns_default_to_the_hard_track(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text(
        "method,dataset,ipc,preset,model,mean,std\nrandom,digits,2,smoke,convnet,74.0,0.1\n",
        encoding="utf-8",
    )
    result = _invoke("check", "--store", STORE, "--baseline", str(path))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("method,dataset\nrandom,digits\n", [], "lacks the column(s) ipc, preset, model"),
        ("method,dataset,ipc,preset,model,mean,std\nrandom,digits,one,smoke,convnet,1,1\n", [],
         "not a number"),
        (None, [], "no baseline at"),
        ("", ["--write-baseline", "x.csv"], "exactly one of"),
        ("", ["--tolerance", "-1"], "--tolerance must be"),
    ],
)  # fmt: skip
def test_bad_input_is_a_one_line_error(tmp_path, content, args, message):
    path = tmp_path / "b.csv"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = _invoke("check", "--store", STORE, "--baseline", str(path), *args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output
