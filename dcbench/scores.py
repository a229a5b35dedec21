"""DD-Ranking's scores (spec mtt_and_benchmarks.md §2.2), on accuracies as fractions in [0, 1].

- hard-label recovery HLR = Acc(full, hard) − Acc(syn, hard) (lower is better);
- improvement over random IOR = Acc(syn, soft) − Acc(random, soft): the soft-label recipe applied
  to the distilled set and to a random real subset of the same IPC (higher is better);
- label-robust score LRS = (e^α − e^−1)/(e − e^−1) with α = w·IOR − (1 − w)·HLR, w = 0.5;
- augmentation-robust score ARS = (e^β − e^−1)/(e − e^−1) with
  β = γ·(Acc(syn, aug) − Acc(rdm, aug)) + (1 − γ)·(Acc(syn, naug) − Acc(rdm, naug)), γ = 0.5,
  where aug / naug are the soft recipe with and without the student augmentations.

α and β lie in [−1, 1] for fractions, so LRS and ARS lie in [0, 1]. DD-Ranking v0.2.0 feeds
percentages into the same formulas (defect §2.8.1), which sends the scores far outside [0, 1]; we
never do.

:func:`score_frame` computes the scores from a records frame (``leaderboard.records_frame``):
per (preset, protocol, model, method, dataset, ipc), paired over evaluation seeds (every record
with evaluation seed k starts from the same network, ``protocol.eval_seed``; distillation seeds are
averaged first), mean ± population std over the seeds all arms share. When the arms share no seed
the arms' means are used (``paired`` False, n 1).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: DD-Ranking's defaults (``lrs_lambda``, ``ars_lambda``).
DEFAULT_W = 0.5
DEFAULT_GAMMA = 0.5
#: The evaluators whose accuracies enter the scores.
HARD, SOFT, NOAUG = "hard", "soft", "soft-noaug"
METRICS = ("hlr", "ior", "lrs", "ars")
KEYS = ["preset", "protocol", "model", "method", "dataset", "ipc"]


def exp_score(x):
    """(e^x − e^−1)/(e − e^−1): maps [−1, 1] onto [0, 1] (floats or arrays)."""
    return (np.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def hard_label_recovery(acc_full_hard, acc_syn_hard):
    """HLR = Acc(full, hard) − Acc(syn, hard)."""
    return np.subtract(acc_full_hard, acc_syn_hard)


def improvement_over_random(acc_syn, acc_random):
    """IOR = Acc(syn) − Acc(random) under the same recipe."""
    return np.subtract(acc_syn, acc_random)


def label_robust_score(hlr, ior, w: float = DEFAULT_W):
    """LRS = exp_score(w·IOR − (1 − w)·HLR)."""
    return exp_score(w * np.asarray(ior) - (1 - w) * np.asarray(hlr))


def augmentation_robust_score(syn_aug, random_aug, syn_noaug, random_noaug,
                              gamma: float = DEFAULT_GAMMA):  # fmt: skip
    """ARS = exp_score(γ·(syn_aug − rdm_aug) + (1 − γ)·(syn_naug − rdm_naug))."""
    beta = gamma * np.subtract(syn_aug, random_aug) + (1 - gamma) * np.subtract(
        syn_noaug, random_noaug
    )
    return exp_score(beta)


def _arms(ok: pd.DataFrame, evaluator: str) -> pd.DataFrame:
    """Accuracy per (preset, protocol, model, method, dataset, ipc, eval_seed) of ``evaluator``,
    distillation seeds averaged, the newest evaluator protocol version of each preset/protocol."""
    part = ok[ok["evaluator"] == evaluator]
    if part.empty:
        return pd.DataFrame(columns=[*KEYS, "eval_seed", "accuracy"])
    newest = part.groupby(["preset", "protocol"], dropna=False)["protocol_version"].transform("max")
    part = part[(part["protocol_version"] == newest).fillna(True).astype(bool)]
    out = part.groupby([*KEYS, "eval_seed"], dropna=False)["accuracy"].mean()
    return out.reset_index()


def _series(arms: pd.DataFrame, key: tuple, method: str, ipc) -> pd.Series:
    preset, protocol, model, _, dataset, _ = key
    mask = (
        (arms["preset"] == preset) & (arms["protocol"] == protocol) & (arms["model"] == model)
        & (arms["method"] == method) & (arms["dataset"] == dataset)
    )  # fmt: skip
    mask &= arms["ipc"].isna() if ipc is None or pd.isna(ipc) else arms["ipc"] == ipc
    rows = arms[mask.fillna(False).astype(bool)]
    return pd.Series(rows["accuracy"].to_numpy(float), index=rows["eval_seed"].to_numpy())


def _paired(*series: pd.Series) -> tuple[list[np.ndarray], bool] | None:
    """The arms' accuracies over their common evaluation seeds, or their means when they share
    none; None when an arm is missing."""
    if any(s.empty for s in series):
        return None
    common = sorted(set.intersection(*(set(s.index) for s in series)))
    if common:
        return [s.loc[common].to_numpy(float) for s in series], True
    return [np.array([s.mean()]) for s in series], False


def score_frame(frame: pd.DataFrame, *, w: float = DEFAULT_W,
                gamma: float = DEFAULT_GAMMA) -> pd.DataFrame:  # fmt: skip
    """HLR, IOR, LRS and ARS (fractions) of every method with soft-label records: columns
    ``KEYS``, ``<metric>_mean``, ``<metric>_std``, ``<metric>_n`` and ``paired`` (every computed
    metric paired over evaluation seeds). A metric whose arms are missing is NaN (n 0)."""
    columns = [*KEYS] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n")] + ["paired"]
    ok = frame[frame["status"] == "ok"] if "status" in frame else frame
    hard, soft, noaug = _arms(ok, HARD), _arms(ok, SOFT), _arms(ok, NOAUG)
    candidates = pd.concat([soft, noaug])[KEYS].drop_duplicates()
    candidates = candidates[(candidates["method"] != "random") & candidates["ipc"].notna()]
    rows = []
    for key in candidates.itertuples(index=False, name=None):
        _, _, _, method, _, ipc = key
        arms = {
            "hlr": _paired(_series(hard, key, "full", None), _series(hard, key, method, ipc)),
            "ior": _paired(_series(soft, key, method, ipc), _series(soft, key, "random", ipc)),
            "ars": _paired(_series(soft, key, method, ipc), _series(soft, key, "random", ipc),
                           _series(noaug, key, method, ipc), _series(noaug, key, "random", ipc)),
        }  # fmt: skip
        arms["lrs"] = (
            _paired(*(_series(hard, key, "full", None), _series(hard, key, method, ipc),
                      _series(soft, key, method, ipc), _series(soft, key, "random", ipc)))
        )  # fmt: skip
        values: dict[str, np.ndarray | None] = {m: None for m in METRICS}
        if arms["hlr"] is not None:
            values["hlr"] = hard_label_recovery(*arms["hlr"][0])
        if arms["ior"] is not None:
            values["ior"] = improvement_over_random(*arms["ior"][0])
        if arms["lrs"] is not None:
            full, syn_h, syn_s, rdm_s = arms["lrs"][0]
            values["lrs"] = label_robust_score(
                hard_label_recovery(full, syn_h), improvement_over_random(syn_s, rdm_s), w
            )
        if arms["ars"] is not None:
            values["ars"] = augmentation_robust_score(*arms["ars"][0], gamma=gamma)
        row = dict(zip(KEYS, key))
        for metric, v in values.items():
            row[f"{metric}_mean"] = np.nan if v is None else float(np.mean(v))
            row[f"{metric}_std"] = np.nan if v is None else float(np.std(v))
            row[f"{metric}_n"] = 0 if v is None else int(np.size(v))
        row["paired"] = all(a[1] for a in arms.values() if a is not None)
        rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    out["ipc"] = out["ipc"].astype("Int64")
    return out
