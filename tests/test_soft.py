"""The soft-label evaluator (EDC's post-evaluation with a teacher ensemble): recipe values,
augmentations, the loss, EMA, weight decay, determinism, what the teachers label, the glue with
``dcbench.teachers`` and the random control the runner plans."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evaluators.soft as soft
from dcbench.distilled import DistilledSet
from dcbench.errors import DcbenchError
from dcbench.models import build_model
from dcbench.protocol import PRESETS
from dcbench.runner import RunSpec, plan
from dcbench.store import ResultStore
from dcbench.training import init_model
from dcbench.training import test_accuracy as accuracy_of
from evaluators.soft import (
    SoftRecipe,
    crop_boxes,
    cutmix,
    decay_groups,
    ema_update_,
    resized_crop,
    soft_loss,
    soft_recipe,
    train_student,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _build(channels=3, classes=4, model="convnet", width=8):
    return partial(build_model, model, channels, classes, (8, 8), width=width)


@pytest.fixture(scope="module")
def tiny_set(tiny):
    """Two real images per class of the ``tiny`` fixture, normalised."""
    idx = torch.cat([i[:2] for i in tiny.class_indices])
    return tiny.normalize(tiny.train_images[idx]), tiny.train_labels[idx]


@pytest.fixture(scope="module")
def small_teachers(tiny):
    """Two small networks trained briefly on the tiny train split (the evaluator's core takes any
    modules)."""
    x, y = tiny.train()
    teachers = []
    for seed, width in ((1, 8), (2, 4)):
        model = init_model(_build(width=width), seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(20):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        teachers.append(model.eval())
    return teachers


def _recipe(**kw):
    base = dict(epochs=3, batch_size=4)
    base.update(kw)
    return SoftRecipe(**base)


# --- recipe -------------------------------------------------------------------------------------


def test_paper_recipe_and_presets():
    paper = soft_recipe("cifar10", PRESETS.get("paper"))
    assert (paper.epochs, paper.batch_size, paper.lr, paper.weight_decay) == (1000, 25, 1e-3, 0.01)
    assert (paper.ema_decay, paper.ce_weight, paper.gamma) == (0.99, 0.025, 0.5)
    assert paper.loss == "mse_gt" and paper.milestones == (0.8, 0.9, 0.95)
    assert paper.crop_scale == (0.08, 1.0) and paper.flip and paper.randaugment and paper.cutmix
    assert soft_recipe("cifar10", PRESETS.get("fast")).epochs == 300
    digits = soft_recipe("digits", PRESETS.get("smoke"))
    assert digits.epochs == 30 and not digits.flip and not digits.randaugment
    assert digits.crop_scale == (0.5, 1.0)
    assert not soft_recipe("svhn", PRESETS.get("smoke")).flip
    assert not soft_recipe("cifar10", PRESETS.get("smoke"), augment=False).augment
    with pytest.raises(DcbenchError, match="valid choices: mse_gt, kl"):
        SoftRecipe(loss="l1")


def test_schedules():
    r = SoftRecipe()
    assert r.milestone_epochs() == [800, 900, 950]
    assert [r.lr_at(e) for e in (0, 799, 800, 899, 900, 950, 999)] == pytest.approx(
        [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 1.25e-4, 1.25e-4]
    )
    assert SoftRecipe(epochs=30).milestone_epochs() == [24, 27, 28]  # scaled proportionally
    smooth = SoftRecipe(schedule="smoothing", zeta=2.0)
    assert smooth.lr_at(0) == pytest.approx(1e-3)
    assert smooth.lr_at(999) / 1e-3 == pytest.approx(0.5008, abs=1e-4)  # spec §4.2
    assert smooth.lr_at(500) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))


# --- loss, EMA, weight decay --------------------------------------------------------------------


def test_losses_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 1])
    mse = (1 + 0 + 1 + 1) / 4
    ce = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2
    assert float(soft_loss(s, t, y, SoftRecipe())) == pytest.approx(mse + 0.025 * ce)
    # KL(teacher ‖ student), batchmean, temperature 2, with and without ×T²
    ps, pt = F.softmax(s / 2, 1), F.softmax(t / 2, 1)
    kl = float((pt * (pt.log() - ps.log())).sum() / 2)
    assert float(soft_loss(s, t, y, SoftRecipe(loss="kl", temperature=2.0))) == pytest.approx(kl)
    both = SoftRecipe(loss="kl", temperature=2.0, kl_t_squared=True)
    assert float(soft_loss(s, t, y, both)) == pytest.approx(4 * kl)


def test_ema_decay_fits_the_step_count():
    r = SoftRecipe()
    assert r.effective_ema_decay(1000) == r.effective_ema_decay(4000) == 0.99  # every paper run
    assert r.effective_ema_decay(30) == pytest.approx(1 - 5 / 30)
    assert r.effective_ema_decay(30) ** 30 < math.exp(-5) + 1e-3
    assert r.effective_ema_decay(3) == 0.0
    assert SoftRecipe(ema_horizon=None).effective_ema_decay(30) == 0.99


def test_ema_update_arithmetic():
    ema = [torch.tensor([1.0, -2.0])]
    ema_update_(ema, [torch.tensor([3.0, 0.0])], 0.99)
    assert ema[0].tolist() == pytest.approx([0.99 + 0.03, -1.98])


def test_weight_decay_only_on_matrix_weights():
    model = _build(model="convnet-bn")()
    decay, plain = decay_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["params"] and all(p.dim() >= 2 for p in decay["params"])
    assert all(names[id(p)].endswith("weight") for p in decay["params"])
    assert all(p.dim() == 1 for p in plain["params"])  # biases and norm affine parameters
    assert len(decay["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_ema_starts_from_the_initial_weights(tiny_set, small_teachers):
    images, labels = tiny_set
    build = _build()
    # exactly one step, at the paper's decay (no short-run adjustment)
    recipe = _recipe(epochs=1, batch_size=len(labels), augment=False, ema_horizon=None)
    result = train_student(build, images, labels, small_teachers, recipe, seed=5, mean=MEAN,
                           std=STD, device=torch.device("cpu"))  # fmt: skip
    init = init_model(build, 5)
    for p0, p, e in zip(init.parameters(), result.model.parameters(),
                        result.ema_model.parameters()):  # fmt: skip
        torch.testing.assert_close(e, 0.99 * p0 + 0.01 * p)
        assert not torch.equal(p0, p)


# --- augmentation -------------------------------------------------------------------------------


def test_crop_boxes_and_resize():
    gen = torch.Generator().manual_seed(0)
    boxes = crop_boxes(500, 8, 8, (0.08, 1.0), (3 / 4, 4 / 3), gen)
    top, left, h, w = boxes.T
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= 8).all() and (left + w <= 8).all()
    assert len(set(map(tuple, boxes.tolist()))) > 50
    # an impossible scale falls back to the central crop, as torchvision
    assert crop_boxes(3, 8, 8, (2.0, 3.0), (3 / 4, 4 / 3), gen).tolist() == [[0, 0, 8, 8]] * 3
    x = torch.randn(500, 3, 8, 8, generator=gen)
    out = resized_crop(x, boxes)
    for i in range(0, 500, 37):
        t, l_, hh, ww = boxes[i].tolist()
        ref = F.interpolate(x[i : i + 1, :, t : t + hh, l_ : l_ + ww], size=(8, 8),
                            mode="bilinear", align_corners=False, antialias=True)  # fmt: skip
        torch.testing.assert_close(out[i : i + 1], ref)
    full = torch.tensor([[0, 0, 8, 8]]).repeat(4, 1)
    torch.testing.assert_close(resized_crop(x[:4], full), x[:4])


def test_cutmix_pastes_one_box_from_a_permutation():
    gen = torch.Generator().manual_seed(3)
    x = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 2, 8, 8).contiguous()
    for _ in range(20):
        mixed, (y1, y2, x1, x2) = cutmix(x, gen)
        inside = torch.zeros(8, 8, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        torch.testing.assert_close(mixed[:, :, ~inside], x[:, :, ~inside])
        if inside.any():
            sources = mixed[:, 0, inside][:, 0]
            assert sorted(sources.tolist()) == list(range(6))  # a permutation of the batch
            assert (mixed[:, :, inside] == sources[:, None, None]).all()


def test_augmenter_is_deterministic_and_randaugment_runs(tiny_set):
    images, _ = tiny_set
    aug = soft.Augmenter(SoftRecipe(), MEAN, STD)  # RandAugment + crop + flip + CutMix

    def draw(seed):
        return aug(images, torch.Generator().manual_seed(seed))

    torch.testing.assert_close(draw(1), draw(1), rtol=0, atol=0)
    assert not torch.equal(draw(1), draw(2))
    assert draw(1).shape == images.shape
    assert soft.Augmenter(SoftRecipe(augment=False), MEAN, STD)(images, None) is images


# --- training -----------------------------------------------------------------------------------


class Spy(nn.Module):
    """A teacher that records its inputs and returns fixed logits."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 4)


def test_teachers_label_the_post_cutmix_batch(tiny_set, monkeypatch):
    images, labels = tiny_set
    mixed: list[torch.Tensor] = []

    def recording_cutmix(x, gen):
        out = cutmix(x, gen)
        mixed.append(out[0].clone())
        return out

    monkeypatch.setattr(soft, "cutmix", recording_cutmix)
    student_inputs: list[torch.Tensor] = []

    def build():
        model = _build()()
        model.register_forward_pre_hook(lambda m, a: student_inputs.append(a[0].clone()))
        return model

    spy = Spy()
    train_student(build, images, labels, [spy], _recipe(randaugment=False), seed=0, mean=MEAN,
                  std=STD, device=torch.device("cpu"))  # fmt: skip
    assert len(spy.seen) == len(mixed) == 3 * 2  # 3 epochs × ⌈8/4⌉ steps
    for teacher_x, mixed_x, student_x in zip(spy.seen, mixed, student_inputs):
        torch.testing.assert_close(teacher_x, mixed_x, rtol=0, atol=0)
        torch.testing.assert_close(student_x, mixed_x, rtol=0, atol=0)
    assert not any(any(torch.equal(s, images[i : i + 4]) for i in (0, 4)) for s in spy.seen)


def test_no_augmentation_labels_the_stored_images_once(tiny_set):
    images, labels = tiny_set
    spy = Spy()
    train_student(_build(), images, labels, [spy], _recipe(augment=False), seed=0, mean=MEAN,
                  std=STD, device=torch.device("cpu"))  # fmt: skip
    assert len(spy.seen) == 1
    torch.testing.assert_close(spy.seen[0], images, rtol=0, atol=0)


def test_same_seed_same_student(tiny, tiny_set, small_teachers):
    images, labels = tiny_set
    test_x, test_y = tiny.test()
    cpu = torch.device("cpu")

    def run(seed):
        r = train_student(_build(), images, labels, small_teachers, _recipe(randaugment=True),
                          seed=seed, mean=MEAN, std=STD, device=cpu)  # fmt: skip
        return r, accuracy_of(r.ema_model, test_x, test_y, cpu)

    (a, acc_a), (b, acc_b), (c, _) = run(7), run(7), run(8)
    assert acc_a == acc_b and a.loss == b.loss
    for p, q in zip(a.ema_model.parameters(), b.ema_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert a.loss != c.loss


# --- the evaluator (with dcbench.teachers) ------------------------------------------------------


def test_evaluate_records_final_ema_accuracy_and_teachers(tiny, quick_preset, tmp_path,
                                                          monkeypatch):  # fmt: skip
    from dcbench.cache import ArtifactCache

    monkeypatch.setattr(soft, "default_teacher_names", lambda info, preset: ("convnetbn-d1-w64",))
    idx = torch.cat([i[:2] for i in tiny.class_indices])
    distilled = DistilledSet(tiny.normalize(tiny.train_images[idx]), tiny.train_labels[idx])
    cache = ArtifactCache(tmp_path)
    evaluator = soft.SoftLabelEvaluator()
    kw = dict(seeds=[11, 12], device=torch.device("cpu"), budget=quick_preset, cache=cache)
    first = evaluator.evaluate(distilled, tiny, "convnet", **kw)
    again = evaluator.evaluate(distilled, tiny, "convnet", **kw)  # teachers from the cache
    assert [m["accuracy"] for m in first] == [m["accuracy"] for m in again]
    m = first[0]
    assert m["teacher_names"] == ["convnetbn-d1-w64"]
    assert m["teacher_bytes"] == 4 * m["teacher_params"] > 0
    assert m["epochs"] == quick_preset.eval_epochs and m["train_images"] == 8
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["teacher_accuracy"] <= 1
    assert len(m["teacher_test_accuracy"]) == 1 and m["teacher_train_seconds"] >= 0
    assert m["eval_seconds"] > 0 and math.isfinite(m["loss"])
    # the number is the final EMA student's: rerun the core with the same seed
    teachers = soft.load_teachers(tiny, ("convnetbn-d1-w64",), budget=quick_preset,
                                  device=torch.device("cpu"), cache=cache)  # fmt: skip
    recipe = soft.soft_recipe("tiny", quick_preset)
    build = partial(build_model, "convnet", 3, 4, (8, 8))
    result = train_student(build, distilled.images, distilled.labels, teachers.models, recipe,
                           seed=11, mean=tiny.info.mean, std=tiny.info.std,
                           device=torch.device("cpu"))  # fmt: skip
    test_x, test_y = tiny.test()
    assert m["accuracy"] == accuracy_of(result.ema_model, test_x, test_y, torch.device("cpu"))
    noaug = soft.SoftLabelNoAugEvaluator().evaluate(distilled, tiny, "convnet", **kw)
    assert noaug[0]["teacher_names"] == m["teacher_names"]
    full = DistilledSet(torch.empty(0, 3, 8, 8), torch.empty(0).long(), reference="train")
    with pytest.raises(DcbenchError, match="upper bound is the teachers' accuracy"):
        evaluator.evaluate(full, tiny, "convnet", **kw)


# --- the random control -------------------------------------------------------------------------


def _planned(tmp_path, methods, evaluators):
    spec = RunSpec(methods=methods, datasets=["tiny"], ipcs=[1, 2], evaluators=evaluators,
                   eval_seeds=[0], device="cpu")  # fmt: skip
    jobs, _, _ = plan(spec, ResultStore(tmp_path))
    return {(j.method, j.ipc): [t.evaluator for t in j.evals] for j in jobs}


def test_soft_track_always_plans_the_random_control(tmp_path):
    jobs = _planned(tmp_path, ["herding", "full"], ["hard", "soft"])
    assert jobs[("random", 1)] == jobs[("random", 2)] == ["soft"]  # added: the control only
    assert jobs[("herding", 1)] == ["hard", "soft"]
    assert jobs[("full", None)] == ["hard"]  # no soft evaluation of the whole train split
    listed = _planned(tmp_path, ["random", "herding"], ["hard", "soft", "soft-noaug"])
    assert listed[("random", 1)] == ["hard", "soft", "soft-noaug"]  # once, as the user asked
    assert sum(1 for m, _ in listed if m == "random") == 2
    assert ("random", 1) not in _planned(tmp_path, ["herding"], ["hard"])


def test_zca_sets_are_mapped_back_to_normalised_pixels(tiny):
    from dcbench.zca import dataset_zca, whiten, zca_meta

    raw = tiny.train_images[:6]
    whitened = whiten(raw, dataset_zca(tiny, 0.1))
    distilled = DistilledSet(whitened, tiny.train_labels[:6], meta={"zca": zca_meta(tiny, 0.1)})
    images, labels = soft.soft_images(distilled, tiny, torch.device("cpu"))
    torch.testing.assert_close(images, tiny.normalize(raw), atol=1e-3, rtol=0)
    assert torch.equal(labels, tiny.train_labels[:6])


def test_runner_evaluates_the_soft_track_with_cached_teachers(tmp_path, monkeypatch, quick_preset):
    from dcbench.runner import run

    monkeypatch.setitem(PRESETS._items, "smoke", quick_preset)
    monkeypatch.setattr(soft, "default_teacher_names", lambda info, preset: ("convnetbn-d1-w64",))
    store = ResultStore(tmp_path / "store")
    spec = RunSpec(methods=["herding"], datasets=["tiny"], ipcs=[1], evaluators=["soft"],
                   eval_seeds=[0], device="cpu")  # fmt: skip
    summary = run(spec, store)
    assert summary.done == 2 and not summary.failed
    records = {r["method"]: r for r in store.records()}
    assert set(records) == {"herding", "random"}  # the control came along
    assert records["random"]["metrics"]["teacher_names"] == ["convnetbn-d1-w64"]
    assert len(list((tmp_path / "store" / "cache").glob("teacher-*.safetensors"))) == 1
