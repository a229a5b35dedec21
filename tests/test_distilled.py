"""The distilled-set file format, its validation, the 2×2 decoder and the release importers."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dcbench.data import load_dataset
from dcbench.distilled import (
    DistilledSet,
    decode_partition2x2,
    import_dc,
    import_folder,
    import_mtt,
    read_distilled,
)
from dcbench.errors import InvalidDistilledSetError


@pytest.fixture
def info():
    return load_dataset("tiny").info


def _set(n_per_class=2, classes=4, c=3, h=8, w=8):
    images = torch.randn(n_per_class * classes, c, h, w)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return DistilledSet(images, labels, meta={"dataset": "tiny", "ipc": n_per_class})


def test_save_load_roundtrip_is_exact(tmp_path):
    s = _set()
    s.soft_targets = torch.rand(8, 4)
    s.decoder = "partition2x2"
    s.train_lr = 0.0123
    size = s.save(tmp_path / "a.safetensors")
    assert size == os.path.getsize(tmp_path / "a.safetensors")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    t = DistilledSet.load(tmp_path / "a.safetensors")
    assert torch.equal(t.images, s.images) and torch.equal(t.labels, s.labels)
    assert torch.equal(t.soft_targets, s.soft_targets)
    assert (t.decoder, t.train_lr, t.meta) == ("partition2x2", 0.0123, s.meta)


def test_foreign_and_corrupt_files_give_one_line_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(InvalidDistilledSetError, match="not a dcbench distilled set") as err:
        DistilledSet.load(junk)
    assert "\n" not in str(err.value)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(InvalidDistilledSetError, match="no dcbench header"):
        DistilledSet.load(foreign)
    with pytest.raises(InvalidDistilledSetError, match="no such file"):
        DistilledSet.load(tmp_path / "missing.safetensors")


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "res_evil.pt"
    torch.save({"data": [Evil()]}, path)
    with pytest.raises(InvalidDistilledSetError, match="weights_only"):
        import_dc(path)
    assert not (tmp_path / "pwned").exists()


def test_validate_rejects_bad_sets(info):
    s = _set()
    s.validate(info)
    bad = _set()
    bad.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidDistilledSetError, match="1 NaN/inf"):
        bad.validate(info)
    with pytest.raises(InvalidDistilledSetError, match="expected N×3×8×8"):
        _set(c=1).validate(info)
    wrong = _set()
    wrong.labels[0] = 9
    with pytest.raises(InvalidDistilledSetError, match=r"labels must lie in \[0, 4\)"):
        wrong.validate(info)
    with pytest.raises(InvalidDistilledSetError, match="unknown decoder"):
        DistilledSet(s.images, s.labels, decoder="zoom").validate(info)


def test_partition2x2_quadrant_order_and_upsampling():
    # one 1×4×4 image whose quadrants are constant 1 (TL), 2 (TR), 3 (BL), 4 (BR)
    img = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=torch.float)
    two = torch.stack([img, img + 10]).unsqueeze(1)  # two images, labels 0 and 1
    out, labels = decode_partition2x2(two, torch.tensor([0, 1]))
    assert out.shape == (8, 1, 4, 4)
    # block order [all TL; all BL; all TR; all BR], each quadrant upsampled to full size
    expected = [1, 11, 3, 13, 2, 12, 4, 14]
    for k, value in enumerate(expected):
        assert torch.allclose(out[k], torch.full((1, 4, 4), float(value)))
    assert labels.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    # bilinear, align_corners=False: a 2×2 ramp upsampled ×2 interpolates between pixel centres
    ramp = torch.tensor([[0.0, 4.0], [0.0, 4.0]])
    img2 = torch.zeros(1, 1, 4, 4)
    img2[0, 0, :2, :2] = ramp
    out2, _ = decode_partition2x2(img2, torch.tensor([0]))
    assert out2[0, 0, 0].tolist() == [0.0, 1.0, 3.0, 4.0]


def test_import_dc_release_takes_last_experiment(tmp_path):
    runs = [[torch.randn(4, 3, 8, 8), torch.arange(4)] for _ in range(3)]
    path = tmp_path / "res_DM_tiny_ConvNet_1ipc.pt"
    torch.save({"data": runs, "accs_all_exps": {"ConvNet": [0.5, 0.6]}}, path)
    s = read_distilled(path)
    assert torch.equal(s.images, runs[-1][0]) and s.labels.tolist() == [0, 1, 2, 3]
    assert torch.equal(import_dc(path, experiment=0).images, runs[0][0])
    torch.save({"images": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InvalidDistilledSetError, match="DC release format"):
        import_dc(tmp_path / "other.pt")


def test_import_mtt_single_and_sharded(tmp_path):
    images = torch.randn(8, 3, 8, 8)
    labels = torch.arange(4).repeat_interleave(2)
    one = tmp_path / "one"
    one.mkdir()
    torch.save(images, one / "images_best.pt")
    torch.save(labels, one / "labels_best.pt")
    torch.save(torch.tensor(0.03), one / "lr_best.pt")
    s = read_distilled(one)
    assert torch.equal(s.images, images) and torch.equal(s.labels, labels)
    assert s.train_lr == pytest.approx(0.03)
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        torch.save(images[4 * k : 4 * k + 4], shards / f"images_best_{k}.pt")
    torch.save(torch.nn.functional.one_hot(labels, 4).float(), shards / "labels_best.pt")
    s2 = import_mtt(shards / "images_best_0.pt")
    assert torch.equal(s2.images, images) and torch.equal(s2.labels, labels)
    with pytest.raises(InvalidDistilledSetError, match="no MTT release"):
        import_mtt(tmp_path)


def test_import_folder_normalises_with_dataset_constants(tmp_path, info):
    for c in range(2):
        (tmp_path / str(c)).mkdir()
        Image.new("RGB", (8, 8), (255, 128 * c, 0)).save(tmp_path / str(c) / "a.png")
    s = import_folder(tmp_path, info)
    assert s.images.shape == (2, 3, 8, 8) and s.labels.tolist() == [0, 1]
    mean, std = info.mean[0], info.std[0]
    assert s.images[0, 0, 0, 0].item() == pytest.approx((1.0 - mean) / std, abs=1e-6)
    assert s.images[1, 1, 0, 0].item() == pytest.approx(
        (128 / 255 - info.mean[1]) / info.std[1], abs=1e-6
    )
