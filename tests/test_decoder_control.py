"""benchmarks/decoder_control.py: its two arms differ only in the decoder's resolution loss."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from decoder_control import ARMS, control_set  # noqa: E402


def test_arms_train_on_the_same_number_of_images_per_class(tiny):
    ipc = 2
    real, mosaic = (control_set(tiny, ipc, arm) for arm in ARMS)
    assert real.decoder is None and mosaic.decoder == "partition2x2"
    assert mosaic.num_images == tiny.info.num_classes * ipc
    (x_real, y_real), (x_mosaic, y_mosaic) = real.decoded(), mosaic.decoded()
    assert x_real.shape == x_mosaic.shape
    assert torch.equal(torch.bincount(y_real), torch.bincount(y_mosaic))
    assert torch.equal(torch.bincount(y_real), torch.full((tiny.info.num_classes,), 4 * ipc))


def test_real_arm_holds_train_images_and_mosaic_arm_their_half_resolution(tiny):
    real = control_set(tiny, 1, "real-4ipc")
    train = tiny.normalize(tiny.train_images)
    # every real-arm image is a train image of its class
    for image, label in zip(real.images, real.labels):
        match = (train - image).abs().flatten(1).amax(1) < 1e-6
        assert match.any() and (tiny.train_labels[match] == label).all()
    # each quadrant of a mosaic image is a real image of its class downsampled by two
    mosaic = control_set(tiny, 1, "mosaic-decoded")
    h, w = tiny.info.height // 2, tiny.info.width // 2
    small = F.interpolate(train, size=(h, w), mode="bilinear", align_corners=False)
    for image, label in zip(mosaic.images, mosaic.labels):
        for quadrant in (image[:, :h, :w], image[:, h:, :w], image[:, :h, w:], image[:, h:, w:]):
            match = (small - quadrant).abs().flatten(1).amax(1) < 1e-5
            assert match.any() and (tiny.train_labels[match] == label).all()


def test_arms_are_seeded(tiny):
    for arm in ARMS:
        assert torch.equal(control_set(tiny, 1, arm).images, control_set(tiny, 1, arm).images)
