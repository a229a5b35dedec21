"""The coreset baselines: herding and k-center selections and their cached feature network."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import dcbench.matching as matching
from dcbench.cache import ArtifactCache
from dcbench.cli import main as cli
from dcbench.matching import CoresetConfig
from dcbench.method import METHODS
from dcbench.protocol import PRESETS
from dcbench.store import ResultStore
from methods.herding import herding_select
from methods.kcenter import kcenter_select

CPU = torch.device("cpu")
SMALL = CoresetConfig(width=8)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes gain nothing from threads, and OpenMP waits badly on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# Selections by hand

LINE = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # mean 3.25


def test_herding_by_hand_on_a_line():
    # 1: closest to 3.25 → 2 (row 2); 2: target 6.5 − 2 = 4.5 → 1 (row 1, |3.5| < |5.5|);
    # 3: target 9.75 − 3 = 6.75 → 10 (row 3, |3.25| < |6.75|); 4: the rest (row 0)
    assert herding_select(LINE, 4).tolist() == [2, 1, 3, 0]
    assert herding_select(LINE, 2).tolist() == [2, 1]
    assert herding_select(LINE, 0).tolist() == []


def test_kcenter_by_hand_on_a_line():
    # first the row nearest 3.25 (2), then the farthest from it (10), then from {2, 10}: 0
    # (distance 2) before 1 (distance 1)
    assert kcenter_select(LINE, 4).tolist() == [2, 3, 0, 1]
    assert kcenter_select(LINE, 1).tolist() == [2]


def test_selections_by_hand_in_the_plane():
    # a square's corners, its centre and a far outlier; mean (2, 1/3)
    points = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1.0, 1.0], [7.0, -3.0]])
    assert points.mean(0).tolist() == pytest.approx([2.0, 1 / 3])
    # k-center: nearest the mean is (2, 0) [distance² 1/9]; farthest from it is the outlier
    # (distance² 34); then the farthest from {(2, 0), (7, −3)} is (0, 2) (distance² 8)
    assert kcenter_select(points, 3).tolist() == [1, 5, 2]
    # herding: step 1 nearest the mean → (2, 0); step 2 target 2·mean − (2, 0) = (2, 2/3):
    # distances² (1, 1): 10/9, (2, 2): 16/9, (0, 0): 40/9 → (1, 1);
    # step 3 target 3·mean − (3, 1) = (3, 0): (2, 2): 5, (0, 0): 9, (0, 2): 13 → (2, 2)
    assert herding_select(points, 3).tolist() == [1, 4, 3]


def test_selections_never_repeat_rows_even_for_duplicates():
    dup = torch.tensor([[1.0], [1.0], [1.0], [5.0]])
    assert sorted(herding_select(dup, 4).tolist()) == [0, 1, 2, 3]
    assert sorted(kcenter_select(dup, 4).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        kcenter_select(dup, 5)


# --------------------------------------------------------------------------------------------------
# The methods on the tiny dataset


@pytest.mark.parametrize("name", ["herding", "kcenter"])
def test_coresets_select_real_images_of_the_right_class(tiny, name, tmp_path):
    method = METHODS.get(name)()
    out = method.distill(
        tiny, 3, SMALL, seed=0, device=CPU, budget=PRESETS.get("smoke"),
        cache=ArtifactCache(tmp_path),
    )  # fmt: skip
    idx = torch.tensor(out.meta["indices"])
    assert out.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert torch.equal(tiny.train_labels[idx], out.labels)
    assert torch.equal(out.images, tiny.normalize(tiny.train_images[idx]))
    assert all(idx[out.labels == c].unique().numel() == 3 for c in range(4))
    assert 0.0 <= out.meta["feature_network"]["test_accuracy"] <= 1.0
    out.validate(tiny.info)


def test_feature_network_is_trained_once_and_shared(tiny, tmp_path, monkeypatch):
    calls = []
    train = matching.train_networks

    def counting(*args, **kwargs):
        calls.append(1)
        return train(*args, **kwargs)

    monkeypatch.setattr(matching, "train_networks", counting)
    smoke = PRESETS.get("smoke")
    herding, kcenter = METHODS.get("herding")(), METHODS.get("kcenter")()
    a = herding.distill(
        tiny, 2, SMALL, seed=0, device=CPU, budget=smoke, cache=ArtifactCache(tmp_path)
    )
    assert len(calls) == 1 and len(list(tmp_path.glob("coreset-net-*.safetensors"))) == 1
    # a fresh cache object on the same folder (a new process): no retraining, same selection
    b = herding.distill(
        tiny, 2, SMALL, seed=9, device=CPU, budget=smoke, cache=ArtifactCache(tmp_path)
    )
    kcenter.distill(tiny, 1, SMALL, seed=0, device=CPU, budget=smoke, cache=ArtifactCache(tmp_path))
    assert len(calls) == 1
    assert a.meta["indices"] == b.meta["indices"]
    # without a cache the network is trained, to the same weights
    c = herding.distill(tiny, 2, SMALL, seed=0, device=CPU, budget=smoke, cache=None)
    assert len(calls) == 2 and c.meta["indices"] == a.meta["indices"]
    # another network seed is another network
    other = CoresetConfig(width=8, net_seed=1)
    herding.distill(tiny, 2, other, seed=0, device=CPU, budget=smoke, cache=ArtifactCache(tmp_path))
    assert len(calls) == 3 and len(list(tmp_path.glob("coreset-net-*.safetensors"))) == 2


def test_feature_network_epochs_override(tiny, tmp_path):
    """``epochs`` replaces the preset's full_epochs and keys its own cached network."""
    smoke = PRESETS.get("smoke")
    herding = METHODS.get("herding")()
    default = herding.distill(tiny, 1, SMALL, seed=0, device=CPU, budget=smoke, cache=None)
    assert default.meta["feature_network"]["epochs"] == smoke.full_epochs
    longer = CoresetConfig(width=8, epochs=smoke.full_epochs + 2)
    out = herding.distill(
        tiny, 1, longer, seed=0, device=CPU, budget=smoke, cache=ArtifactCache(tmp_path)
    )
    assert out.meta["feature_network"]["epochs"] == smoke.full_epochs + 2
    assert len(list(tmp_path.glob("coreset-net-*.safetensors"))) == 1


def test_coresets_leave_the_global_rng_alone(tiny):
    state = torch.get_rng_state()
    METHODS.get("kcenter")().distill(
        tiny, 1, SMALL, seed=0, device=CPU, budget=PRESETS.get("smoke")
    )
    assert torch.equal(torch.get_rng_state(), state)


def test_end_to_end_run_of_the_new_methods(tmp_path):
    store = tmp_path / "store"
    result = CliRunner().invoke(
        cli,
        [
            "run", "--methods", "dm,herding,kcenter", "--datasets", "tiny", "--ipc", "1",
            "--store", str(store), "--eval-seeds", "0", "--device", "cpu", "--no-progress",
            "--set", "width=8",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = ResultStore(store).to_dataframe(include_failed=True)
    assert sorted(records["method"]) == ["dm", "herding", "kcenter"]
    assert (records["status"] == "ok").all()
