"""DD-Ranking's HLR, IOR, LRS and ARS on fractions: hand-computed values, the percent defect of
DD-Ranking v0.2.0, and the scores of a records frame (pairing over evaluation seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dcbench.leaderboard import records_frame
from dcbench.scores import (
    augmentation_robust_score,
    exp_score,
    hard_label_recovery,
    improvement_over_random,
    label_robust_score,
    score_frame,
)


def test_formulas_by_hand():
    assert hard_label_recovery(0.9, 0.6) == pytest.approx(0.3)
    assert improvement_over_random(0.7, 0.5) == pytest.approx(0.2)
    # α = 0.5·0.2 − 0.5·0.3 = −0.05; (e^−0.05 − e^−1)/(e − e^−1)
    assert label_robust_score(0.3, 0.2) == pytest.approx(0.24819153796149165)
    assert label_robust_score(0.3, 0.2, w=1.0) == pytest.approx(exp_score(0.2))
    # β = 0.5·(0.7 − 0.5) + 0.5·(0.4 − 0.45) = 0.075
    assert augmentation_robust_score(0.7, 0.5, 0.4, 0.45) == pytest.approx(0.3020779393151249)
    assert augmentation_robust_score(0.7, 0.5, 0.4, 0.45, gamma=0.0) == pytest.approx(
        exp_score(-0.05)
    )
    assert exp_score(-1.0) == pytest.approx(0.0) and exp_score(1.0) == pytest.approx(1.0)
    assert exp_score(0.0) == pytest.approx(1 / (1 + math.e))  # no gain, no loss
    np.testing.assert_allclose(label_robust_score(np.array([0.3, 0.0]), np.array([0.2, 1.0])),
                               [0.24819153796149165, exp_score(0.5)])  # fmt: skip


def test_percent_inputs_leave_the_unit_interval_fractions_do_not():
    """DD-Ranking v0.2.0 passes percentages (spec §2.8.1): the same accuracies give scores
    outside [0, 1]; as fractions every score stays inside."""
    full, syn_h, syn_s, rdm_s = 0.90, 0.60, 0.70, 0.50
    frac = label_robust_score(
        hard_label_recovery(full, syn_h), improvement_over_random(syn_s, rdm_s)
    )
    pct = label_robust_score(hard_label_recovery(90, 60), improvement_over_random(70, 50))
    assert 0 <= frac <= 1
    assert pct == pytest.approx(-0.1536509221253469)  # α = −5
    assert label_robust_score(0.0, 40.0) > 1  # α = +20 with percentages
    assert not 0 <= augmentation_robust_score(70, 50, 40, 45) <= 1
    grid = np.linspace(0, 1, 6)
    for a in grid:
        for b in grid:
            assert 0 <= label_robust_score(a, b - a) <= 1
            assert 0 <= augmentation_robust_score(a, b, b, a) <= 1


def _rec(key, method, evaluator, acc, *, ipc=1, seed=0, dseed=0, version=1, preset="smoke"):
    return {
        "key": key, "status": "ok", "method": method, "dataset": "digits", "ipc": ipc,
        "distill_seed": dseed, "preset": preset, "evaluator": evaluator,
        "protocol_version": version, "protocol": 1, "model": "convnet", "eval_seed": seed,
        "artifact": f"a-{method}",
        "metrics": {"accuracy": acc}, "cost": {}, "env": {"dcbench_version": "0.1.0"},
    }  # fmt: skip


def _records():
    arms = {  # (method, evaluator): accuracy per evaluation seed 0, 1
        ("full", "hard"): (0.95, 0.93),
        ("dm", "hard"): (0.60, 0.62),
        ("dm", "soft"): (0.80, 0.78),
        ("random", "soft"): (0.70, 0.74),
        ("dm", "soft-noaug"): (0.50, 0.52),
        ("random", "soft-noaug"): (0.55, 0.51),
        ("random", "hard"): (0.40, 0.42),
    }
    records = []
    for (method, evaluator), accs in arms.items():
        for seed, acc in enumerate(accs):
            ipc = None if method == "full" else 1
            records.append(_rec(f"{method}-{evaluator}-{seed}", method, evaluator, acc, ipc=ipc,
                                seed=seed))  # fmt: skip
    return records


def test_score_frame_pairs_evaluation_seeds():
    scores = score_frame(records_frame(_records()))
    assert list(scores["method"]) == ["dm"]  # random is the control, full the upper bound
    row = scores.iloc[0]
    hlr = np.array([0.95 - 0.60, 0.93 - 0.62])
    ior = np.array([0.80 - 0.70, 0.78 - 0.74])
    lrs = label_robust_score(hlr, ior)
    ars = augmentation_robust_score(np.array([0.80, 0.78]), np.array([0.70, 0.74]),
                                    np.array([0.50, 0.52]), np.array([0.55, 0.51]))  # fmt: skip
    for name, values in (("hlr", hlr), ("ior", ior), ("lrs", lrs), ("ars", ars)):
        assert row[f"{name}_mean"] == pytest.approx(values.mean())
        assert row[f"{name}_std"] == pytest.approx(values.std())  # population std
        assert row[f"{name}_n"] == 2
    assert bool(row["paired"]) and row["ipc"] == 1


def test_score_frame_missing_arms_unpaired_seeds_and_versions():
    records = [r for r in _records() if r["evaluator"] != "soft-noaug"]
    records = [r for r in records if not (r["method"] == "random" and r["eval_seed"] == 1)]
    # random's soft arm now has seed 0 only: IOR is paired over that seed
    records.append(_rec("old", "dm", "soft", 0.10, seed=0, version=0))  # an older protocol
    records.append(_rec("d1", "dm", "soft", 0.90, seed=0, dseed=1))  # distill seeds averaged
    row = score_frame(records_frame(records)).iloc[0]
    assert row["ars_n"] == 0 and np.isnan(row["ars_mean"])
    assert row["ior_n"] == 1 and row["ior_mean"] == pytest.approx((0.80 + 0.90) / 2 - 0.70)
    unpaired = [_rec("s", "dm", "soft", 0.8, seed=3), _rec("r", "random", "soft", 0.6, seed=4)]
    row = score_frame(records_frame(unpaired)).iloc[0]
    assert not row["paired"] and row["ior_mean"] == pytest.approx(0.2) and row["ior_n"] == 1
    assert np.isnan(row["hlr_mean"]) and np.isnan(row["lrs_mean"])
    fast = [_rec("f", "dm", "soft", 0.8, preset="fast")]
    assert sorted(score_frame(records_frame(fast + unpaired))["preset"]) == ["fast", "smoke"]
