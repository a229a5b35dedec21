"""``dcbench report``: golden tables from the committed fixture store, published numbers, figures,
image grids, the HTML page in a real headless browser, and bad input.

The golden files are rendered from the fixture records as they are (timings and versions
included). After an intended layout change, regenerate them with
``UPDATE_GOLDEN=1 pytest tests/test_report.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dcbench.cli import main
from dcbench.data import denormalize
from dcbench.distilled import DistilledSet
from dcbench.figures import display_images, draw_figures, image_grid
from dcbench.leaderboard import cell_stats, leaderboard_table, provenance, records_frame, tracks
from dcbench.published import DEFAULT_PUBLISHED, load_published
from dcbench.report import (
    accuracy_csv,
    build_report,
    cost_csv,
    load_stores,
    render_markdown,
    write_report,
)
from dcbench.store import SCHEMA_VERSION, ResultStore

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
STORE = "tests/fixtures/store"  # relative: the report names its sources as given
GOLDEN = FIXTURES / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def report(request):
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        loaded = load_stores([STORE])
    finally:
        os.chdir(cwd)
    return build_report(loaded, load_published(FIXTURES / "published.csv"))


@pytest.fixture(scope="module")
def rendered(report, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    written = write_report(report, out)
    return out, written


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


# --- tables -------------------------------------------------------------------------------------


def test_golden_markdown(report):
    _golden("report.md", render_markdown(report, report.figures))


def test_golden_csv(report):
    for name, frame in (("accuracy.csv", accuracy_csv(report)), ("cost.csv", cost_csv(report))):
        _golden(name, frame.to_csv(index=False, float_format="%.4f", lineterminator="\n"))


def test_leaderboard_cells_published_numbers_and_rank(report):
    table = report.tracks[0].leaderboard.frame.set_index("method")
    assert list(table.index) == ["full", "random"]  # registry order
    assert table.loc["random", "digits ipc1"] == "65.73 ± 1.24 (2)"
    # the reported row is shown, the alternative (60.0) and the soft-label row (90.0) are not
    assert table.loc["random", "digits ipc1 published"] == "70.0 ± 1.5"
    assert table.loc["random", "digits ipc1 Δ"] == "-4.27"
    assert table.loc["random", "digits ipc2 DC-BENCH"] == "75.5"
    assert table.loc["random", "digits ipc2 published"] == "—"
    # the IPC-independent upper bound fills every IPC column and is not ranked
    assert table.loc["full", "digits ipc2"] == table.loc["full", "digits ipc1"]
    assert table.loc["full", "digits ipc2 published"] == "97.5 ± 0.2"
    assert table.loc["full", "mean rank"] == "—"
    caption = report.tracks[0].leaderboard.caption
    for part in ("Preset smoke", "protocol v1", "distillation 0 × evaluation 0–1", "dcbench 0.1.0"):
        assert part in caption
    for table in [*report.tracks[0].cross_arch, report.tracks[0].cost]:
        assert "Preset smoke" in table.caption and "dcbench 0.1.0" in table.caption


def _record(key, method, ipc, acc, *, preset="smoke", protocol=1, eval_seed=0, dataset="digits"):
    return {
        "key": key, "status": "ok", "method": method, "dataset": dataset, "ipc": ipc,
        "distill_seed": 0, "preset": preset, "evaluator": "hard", "protocol_version": 1,
        "protocol": protocol, "model": "convnet", "eval_seed": eval_seed, "artifact": f"a-{key}",
        "metrics": {"accuracy": acc}, "cost": {}, "env": {"dcbench_version": "0.1.0"},
    }  # fmt: skip


def test_population_std_and_no_pooling_across_presets_or_protocols():
    records = [
        _record("a", "random", 1, 0.5, eval_seed=0),
        _record("b", "random", 1, 0.7, eval_seed=1),
        _record("c", "random", 1, 0.9, preset="fast"),
        _record("d", "random", 1, 0.1, protocol=2),
    ]
    frame = records_frame(records)
    stats = cell_stats(frame)
    found = tracks(frame)
    assert [(t.preset, t.protocol) for t in found] == [("smoke", 1), ("smoke", 2), ("fast", 1)]
    smoke = found[0].select(stats)
    assert len(smoke) == 1 and smoke["n"].iloc[0] == 2
    assert smoke["mean"].iloc[0] == pytest.approx(60.0)
    assert smoke["std"].iloc[0] == pytest.approx(10.0)  # ddof 0, not 14.14
    table = leaderboard_table(frame, stats, found[1], None)
    assert table.frame.set_index("method").loc["random", "digits ipc1"] == "10.00 ± 0.00 (1)"
    assert "protocol v2" in table.caption


def test_a_cell_shows_only_its_newest_method_config():
    def rec(key, acc, iterations, created, seed=0):
        r = _record(key, "bacon", 1, acc, eval_seed=seed)
        return {**r, "config": {"iterations": iterations}, "created": created}

    records = [
        rec("old0", 0.2, 50, "2026-11-01T00:00:00+00:00", 0),
        rec("old1", 0.4, 50, "2026-11-01T00:00:00+00:00", 1),
        rec("new0", 0.8, 200, "2026-11-02T00:00:00+00:00", 0),
        rec("other", 0.5, 50, "2026-11-01T00:00:00+00:00") | {"ipc": 10},  # its own cell
    ]
    frame = records_frame(records)
    assert frame.set_index("key")["superseded"].to_dict() == {
        "old0": True, "old1": True, "new0": False, "other": False,
    }  # fmt: skip
    stats = cell_stats(frame).set_index("ipc")
    assert stats.loc[1, "n"] == 1 and stats.loc[1, "mean"] == pytest.approx(80.0)
    assert stats.loc[10, "mean"] == pytest.approx(50.0)
    assert "2 finished, 2 of a method config superseded" in provenance(frame, "s")
    assert "0 failed" in provenance(frame, "s")


def test_mean_rank_only_over_columns_where_every_ranked_method_has_a_number():
    records = [
        _record("r1", "random", 1, 0.50), _record("r2", "random", 2, 0.60),
        _record("a1", "alpha", 1, 0.70), _record("a2", "alpha", 2, 0.40),
        _record("b1", "beta", 1, 0.60),  # beta has no ipc 2: that column is not ranked
    ]  # fmt: skip
    frame = records_frame(records)
    track = tracks(frame)[0]
    table = leaderboard_table(frame, cell_stats(frame), track, None)
    rows = table.frame.set_index("method")
    assert list(rows.index) == ["full", "random", "alpha", "beta"]
    assert rows.loc["full"].tolist()[:2] == ["—", "—"]  # always shown, even without records
    assert rows.loc["alpha", "mean rank"] == "1.00"
    assert rows.loc["beta", "mean rank"] == "2.00"
    assert rows.loc["random", "mean rank"] == "3.00"
    assert rows.loc["beta", "digits ipc2"] == "—"
    assert "over the 1 column(s)" in table.caption


def test_committed_published_table():
    table = load_published(DEFAULT_PUBLISHED)
    assert len(table) == 480 and table["source"].str.len().gt(0).all()
    assert set(table["role"]) == {"reported", "alternative", "dc-bench"}
    dcb = table[table["role"] == "dc-bench"]
    assert len(dcb) == 70 and dcb["source"].str.contains("DC-BENCH").all()
    reported = table[table["role"] == "reported"]
    assert not reported.duplicated(["method", "dataset", "ipc", "model", "label_type"]).any()
    cifar_random = reported[
        (reported["method"] == "random") & (reported["dataset"] == "cifar10")
        & (reported["ipc"] == 1) & (reported["model"] == "convnet")
    ]  # fmt: skip
    assert cifar_random["acc_mean"].tolist() == [14.4]  # DC paper; DATM's 15.4 is an alternative
    full = reported[(reported["method"] == "full") & (reported["dataset"] == "cifar10")]
    assert full["ipc"].isna().all() and full["acc_mean"].tolist() == [84.8]
    assert {"DC", "DSA", "KIP", "ImageNet-1K"} <= set(table["method"]) | set(table["dataset"])
    assert set(table["paper_method"]) >= {"Random", "Full dataset", "K-Center"}


# --- figures and image grids --------------------------------------------------------------------


def test_figures_are_valid_png_and_svg(rendered, report):
    out, written = rendered
    names = {p.name for p in written}
    assert {"report.md", "accuracy.csv", "cost.csv", "index.html"} <= names
    stems = [f.name for f in report.figures]
    assert any(s.startswith("acc-vs-ipc-") for s in stems)
    assert any(s.startswith("cross-arch-") for s in stems)
    assert any(s.startswith("acc-vs-time-") for s in stems)
    grids = [s for s in stems if s.startswith("images-")]
    assert grids == ["images-smoke-random-digits-ipc1", "images-smoke-random-digits-ipc2"]
    for stem in stems:
        png = out / "figures" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as im:
            im.verify()
        root = ET.parse(out / "figures" / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")
    md = (out / "report.md").read_text(encoding="utf-8")
    for stem in stems:
        assert f"(figures/{stem}.png)" in md


def test_image_grid_pixels_are_the_denormalised_stored_images(rendered, report):
    out, _ = rendered
    key = report.records.query("method == 'random' and ipc == 2")["artifact"].iloc[0]
    stored = DistilledSet.load(REPO / STORE / "artifacts" / f"{key}.safetensors")
    expected = denormalize(stored.images, stored.meta["mean"], stored.meta["std"])
    _, classes, layout = image_grid(expected, stored.labels)
    with Image.open(out / "figures" / "images-smoke-random-digits-ipc2.png") as im:
        grid = np.asarray(im)
    assert classes == list(range(10)) and layout.scale == 6
    for row, k in enumerate(classes):
        for col, i in enumerate(torch.nonzero(stored.labels == k).flatten().tolist()):
            y, x = layout.origin(row, col)
            step = layout.scale
            cell = grid[y : y + 8 * step : step, x : x + 8 * step : step]
            want = (expected[i, 0] * 255).round().to(torch.uint8).numpy()
            np.testing.assert_array_equal(cell, want)
    assert grid[0, 0] == 255  # white border


def test_encoded_sets_show_stored_images_and_reference_sets_are_skipped(tmp_path):
    store = ResultStore(tmp_path / "store")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 8, 8, generator=gen)
    labels = torch.tensor([0, 0, 1, 1])
    meta = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    store.save_artifact("enc", DistilledSet(images, labels, meta=meta, decoder="partition2x2"))
    store.save_artifact("ref", DistilledSet(torch.empty(0, 3, 8, 8), torch.empty(0).long(),
                                            reference="train"))  # fmt: skip
    for key, method, ipc, artifact in (("k1", "idm", 2, "enc"), ("k2", "full", None, "ref")):
        record = _record(key, method, ipc, 0.5, dataset="tiny")
        store.put({**record, "artifact": artifact})
    report = build_report(load_stores([tmp_path / "store"]), None)
    grids = [f for f in report.figures if f.section == "images"]
    assert [g.name for g in grids] == ["images-smoke-idm-tiny-ipc2"]
    assert "decoder partition2x2" in grids[0].caption
    draw_figures(grids, tmp_path / "figs")
    with Image.open(tmp_path / "figs" / "images-smoke-idm-tiny-ipc2.png") as im:
        grid = np.asarray(im)
    shown, _, layout = image_grid(display_images(images, meta), labels)
    np.testing.assert_array_equal(grid, shown)
    assert grid.shape == (*layout.origin(2, 2), 3)  # 2 classes × 2 stored images, not 8 decoded


# --- HTML in a real browser ---------------------------------------------------------------------

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
NO_BROWSER = "no headless browser: install Debian's `chromium` package (apt-get install chromium)"


@pytest.fixture
def browser() -> str:
    """The chromium executable; the test is skipped without one (it fails instead when
    ``DCBENCH_REQUIRE_BROWSER=1``, as CI sets it, so a missing package cannot pass silently)."""
    if BROWSER is None:
        if os.environ.get("DCBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(NO_BROWSER + " (DCBENCH_REQUIRE_BROWSER=1)")
        pytest.skip(NO_BROWSER)
    return BROWSER


def _browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]  # fmt: skip
    return subprocess.run(
        [BROWSER, *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )


def test_html_is_self_contained(rendered):
    out, _ = rendered
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page  # no CDN, no server
    assert "<link" not in page and "<script src" not in page
    assert page.count('<img src="data:image/png;base64,') == 5
    assert page.count('class="sortable"') == 4


def test_html_renders_and_sorts_in_headless_chromium(rendered, tmp_path, browser):
    out, _ = rendered
    url = (out / "index.html").as_uri() + "#sort=leaderboard-hard-smoke-p1-e1,1,desc"
    dom = _browser(tmp_path, "--dump-dom", url).stdout
    assert 'data-images="5/5"' in dom  # every embedded figure decoded
    assert dom.count('data-sortable="ready"') == 4  # the script ran on every table
    body = dom.split('id="leaderboard-hard-smoke-p1-e1"')[1].split("</tbody>")[0]
    assert body.index("<td>full</td>") < body.index("<td>random</td>")  # 79.44 > 65.73
    dom = _browser(tmp_path, "--dump-dom", url.replace("desc", "asc")).stdout
    body = dom.split('id="leaderboard-hard-smoke-p1-e1"')[1].split("</tbody>")[0]
    assert body.index("<td>random</td>") < body.index("<td>full</td>")


def test_html_screenshot_is_not_blank(rendered, tmp_path, browser):
    out, _ = rendered
    shot = tmp_path / "page.png"
    _browser(tmp_path, "--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={shot}",
             (out / "index.html").as_uri())  # fmt: skip
    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # text and tables drawn


# --- the command line and bad input ------------------------------------------------------------


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_markdown_to_stdout_and_files(tmp_path):
    result = _invoke("report", "--store", str(REPO / STORE), "--format", "md")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# dcbench report") and "| random" in result.output
    assert "figures/" not in result.output
    out = tmp_path / "out"
    result = _invoke("report", "--store", str(REPO / STORE), "--out", str(out), "--format",
                     "md,csv", "--no-figures")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.csv", "cost.csv", "report.md"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "html"], "pass --out DIR"),
        (["--format", "pdf"], "unknown format 'pdf'"),
        (["--preset", "paper"], "no finished records match --preset paper"),
        (["--datasets", "cifar10"], "it holds digits"),
    ],
)
def test_cli_usage_errors(args, message):
    result = _invoke("report", "--store", str(REPO / STORE), *args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_missing_and_empty_stores_are_one_line_errors(tmp_path):
    result = _invoke("report", "--store", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "no store at" in result.output
    ResultStore(tmp_path / "empty")
    result = _invoke("report", "--store", str(tmp_path / "empty"))
    assert result.exit_code == 2 and "no finished records in" in result.output
    (tmp_path / "plain").mkdir()
    result = _invoke("report", "--store", str(tmp_path / "plain"))
    assert result.exit_code == 2 and "is not a dcbench store" in result.output


def test_corrupt_and_newer_records_are_named_and_the_rest_reported(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(REPO / STORE, store)
    (store / "records" / "corrupt.json").write_text('{"key": "x", "status": ', encoding="utf-8")
    newer = json.loads(next((store / "records").glob("*.json")).read_text(encoding="utf-8"))
    newer.update(key="future", schema=SCHEMA_VERSION + 1)
    (store / "records" / "future.json").write_text(json.dumps(newer), encoding="utf-8")
    result = _invoke("report", "--store", str(store))
    assert result.exit_code == 0, result.output
    assert "warning: corrupt record" in result.output and "corrupt.json" in result.output
    assert "future.json has schema 2" in result.output and "upgrade dcbench" in result.output
    assert "## Problems" in result.output and "65.73 ± 1.24 (2)" in result.output


def test_failed_records_are_listed_not_counted(tmp_path):
    store = ResultStore(tmp_path / "store")
    store.put(_record("ok1", "random", 1, 0.5))
    store.put({**_record("bad", "random", 1, 0.0, eval_seed=1), "status": "failed",
               "error": "evaluation failed: boom", "metrics": {}})  # fmt: skip
    report = build_report(load_stores([tmp_path / "store"]), None)
    assert any("1 failed record(s): random digits ipc 1" in p and "boom" in p
               for p in report.problems)  # fmt: skip
    assert report.tracks[0].leaderboard.frame.iloc[1]["digits ipc1"] == "50.00 ± 0.00 (1)"


def test_folder_of_stores_and_duplicate_records(tmp_path):
    shutil.copytree(REPO / STORE, tmp_path / "runs" / "a")
    shutil.copytree(REPO / STORE, tmp_path / "runs" / "b")  # the same records twice
    loaded = load_stores([tmp_path / "runs"])
    assert len(loaded.records) == 12 and len(loaded.artifacts) == 3
    frame = accuracy_csv(build_report(loaded, None))
    assert pd.Series(frame["n"]).eq(2).all()


# --- the soft-label track and DD-Ranking scores -------------------------------------------------


def _soft_records():
    teachers = {"teacher_names": ["convnetbn-d3-w32", "resnet8-bn"], "teacher_params": 123456,
                "teacher_bytes": 493824, "teacher_train_seconds": 12.5,
                "teacher_accuracy": 0.95}  # fmt: skip
    arms = {  # (method, evaluator): accuracies of evaluation seeds 0, 1; eval seconds
        ("full", "hard", None): ((0.95, 0.93), 4.0),
        ("random", "hard", 1): ((0.40, 0.42), 1.0),
        ("dm", "hard", 1): ((0.60, 0.62), 1.0),
        ("random", "soft", 1): ((0.70, 0.74), 6.0),
        ("dm", "soft", 1): ((0.80, 0.78), 6.0),
        ("random", "soft-noaug", 1): ((0.55, 0.51), 3.0),
        ("dm", "soft-noaug", 1): ((0.50, 0.52), 3.0),
    }
    records = []
    for (method, evaluator, ipc), (accs, seconds) in arms.items():
        for seed, acc in enumerate(accs):
            record = _record(f"{method}-{evaluator}-{seed}", method, ipc, acc, eval_seed=seed)
            record["evaluator"] = evaluator
            record["label_kind"] = "soft" if evaluator.startswith("soft") else "hard"
            record["metrics"] = {
                "accuracy": acc,
                "eval_seconds": seconds,
                **(teachers if evaluator.startswith("soft") else {}),
            }
            record["cost"] = {"distill_seconds": 2.0, "stored_bytes": 1000}
            records.append(record)
    return records


def test_soft_track_scores_and_cost_are_reported(tmp_path):
    store = ResultStore(tmp_path / "store")
    for record in _soft_records():
        store.put(record)
    loaded = load_stores([tmp_path / "store"])
    loaded.sources = ["soft-store"]  # the golden file must not name the temporary folder
    report = build_report(loaded, load_published(DEFAULT_PUBLISHED))
    titles = [tr.track.title for tr in report.tracks]
    assert titles[0].startswith("Hard-label track · evaluator hard")  # never pooled
    assert any(t.startswith("Soft-label track · evaluator soft v1") for t in titles)
    soft = next(tr for tr in report.tracks if tr.track.evaluator == "soft")
    board = soft.leaderboard.frame.set_index("method")
    assert board.loc["dm", "digits ipc1"] == "79.00 ± 1.00 (2)"
    assert board.loc["full", "digits ipc1"] == "—"  # the teachers are the soft upper bound
    caption = soft.leaderboard.caption
    for part in (
        "Preset smoke",
        "protocol v1",
        "convnetbn-d3-w32, resnet8-bn",
        "123,456 parameters",
        "494 kB",
        "ensemble test accuracy 95.00%",
        "control",
    ):
        assert part in caption, part
    cost = soft.cost.frame.set_index("method")
    assert cost.loc["dm", "teacher training (once)"] == "12.5 s"
    assert cost.loc["dm", "hard eval time / network"] == "1 s"
    assert cost.loc["dm", "soft ÷ hard eval"] == "6×"
    assert "What the soft track costs" in soft.cost.caption
    hard = report.tracks[0]
    assert "soft ÷ hard eval" not in hard.cost.frame  # the hard track's table is unchanged
    [scores] = report.score_tables
    row = scores.frame.set_index("method").loc["dm"]
    assert row["HLR ↓"] == "0.330 ± 0.020 (2)" and row["IOR ↑"] == "0.070 ± 0.030 (2)"
    assert row["paired"] == "yes" and "fractions" in scores.caption
    assert "soft v1" in scores.caption and "Preset smoke" in scores.caption
    md = render_markdown(report)
    assert "## DD-Ranking scores" in md and "LRS ↑" in md
    _golden("soft-report.md", md)
    written = write_report(report, tmp_path / "out", figures=False)
    assert "scores.csv" in {p.name for p in written}
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert 'id="scores"' in page and "scores-smoke-p1" in page
