"""Differentiable Siamese Augmentation (DSA), exactly as in spec dm_idm_bacon.md §1.3.

One call applies a single augmentation *family* (chosen uniformly among the strategy's families) to
images in normalised space. Randomness comes only from the ``torch.Generator`` passed in. A
:class:`DSADraw` holds, for G groups, a family and that family's parameters per group; images are
mapped to groups by an index tensor, which gives the three modes the methods need:

- training: ``dsa(x, generator)`` — one family for the batch, independent parameters per image;
- siamese: ``dsa.siamese(real, syn, generator)`` — one family and one parameter set for every image
  of both batches;
- per-class siamese: ``dsa.siamese_by_group(real, real_groups, syn, syn_groups, G, generator)`` —
  an independent draw per class (family included), shared by the real and synthetic images of that
  class, applied with one pass per family rather than one per class.

All transforms are differentiable with respect to the images.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from dcbench.errors import DcbenchError

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """Strengths of the DSA families (DC's ``ParamDiffAug``, single-op mode)."""

    flip: float = 0.5  # probability of a horizontal flip
    scale: float = 1.2  # scale factors in [1/scale, scale)
    rotate: float = 15.0  # angles in [-rotate, rotate) degrees
    crop: float = 0.125  # maximal shift as a fraction of the side
    cutout: float = 0.5  # side of the zeroed square as a fraction of the side
    brightness: float = 1.0  # additive shift in [-brightness/2, brightness/2)
    saturation: float = 2.0  # saturation factor in [0, saturation)
    contrast: float = 0.5  # contrast factor in [contrast, contrast + 1)


@dataclass(frozen=True, eq=False)  # tensors: compare fields explicitly
class DSADraw:
    """Random transformation parameters for G groups of images of size ``height``×``width``.

    ``family`` (int64, CPU) indexes ``families``; every other field is a length-G tensor holding the
    parameters of that family for each group (all families are drawn, only the chosen one is used).
    """

    families: tuple[str, ...]
    height: int
    width: int
    family: torch.Tensor  # (G,) int64, on the CPU so the host can dispatch without a sync
    brightness: torch.Tensor  # (G,) additive shift
    saturation: torch.Tensor  # (G,) factor around the per-pixel channel mean
    contrast: torch.Tensor  # (G,) factor around the per-image mean
    shift_h: torch.Tensor  # (G,) int64 row shift of crop
    shift_w: torch.Tensor  # (G,) int64 column shift of crop
    cutout_h: torch.Tensor  # (G,) int64 row of the cutout centre
    cutout_w: torch.Tensor  # (G,) int64 column of the cutout centre
    flip: torch.Tensor  # (G,) bool
    scale_x: torch.Tensor  # (G,)
    scale_y: torch.Tensor  # (G,)
    angle: torch.Tensor  # (G,) radians

    @property
    def num_groups(self) -> int:
        return int(self.family.numel())

    def to(self, device: torch.device | str) -> DSADraw:
        """The same draw with its parameter tensors on ``device`` (``family`` stays on the CPU)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "family"
        }
        return DSADraw(self.families, self.height, self.width, self.family, **moved)


# --------------------------------------------------------------------------------------------------
# The families, on a batch with one parameter value per image


def brightness(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x + shift`` per image."""
    return x + shift.to(x.dtype).view(-1, 1, 1, 1)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``m + (x − m)·factor`` per image, m the per-pixel channel mean (no-op for 1 channel)."""
    if x.shape[1] == 1:  # m == x: the reference computes the identity
        return x
    mean = x.mean(dim=1, keepdim=True)
    return mean + (x - mean) * factor.to(x.dtype).view(-1, 1, 1, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``m + (x − m)·factor`` per image, m the image's mean over C, H, W."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * factor.to(x.dtype).view(-1, 1, 1, 1)


def crop(x: torch.Tensor, shift_h: torch.Tensor, shift_w: torch.Tensor) -> torch.Tensor:
    """Translation with zero fill: ``out[i, j] = x[i + shift_h, j + shift_w]`` where inside."""
    n, c, h, w = x.shape
    # As in DC's rand_crop: pad by one zero pixel and clamp out-of-range reads onto that border.
    padded = F.pad(x, (1, 1, 1, 1))
    rows = (torch.arange(h, device=x.device) + shift_h.view(-1, 1)).clamp(-1, h) + 1  # n×H
    cols = (torch.arange(w, device=x.device) + shift_w.view(-1, 1)).clamp(-1, w) + 1  # n×W
    batch = torch.arange(n, device=x.device).view(-1, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def cutout(
    x: torch.Tensor, centre_h: torch.Tensor, centre_w: torch.Tensor, size_h: int, size_w: int
) -> torch.Tensor:
    """Zero the rows [c_h − size_h//2, c_h − size_h//2 + size_h) × the same columns, clipped."""
    n, _, h, w = x.shape
    top = (centre_h - size_h // 2).view(-1, 1)
    left = (centre_w - size_w // 2).view(-1, 1)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + size_h)  # n×H
    in_cols = (cols >= left) & (cols < left + size_w)  # n×W
    keep = ~(in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w))
    return x * keep.to(x.dtype)  # the reference multiplies by a 0/1 mask


def flip(x: torch.Tensor, do_flip: torch.Tensor) -> torch.Tensor:
    """Horizontal (width-axis) flip of the images where ``do_flip`` is true."""
    return torch.where(do_flip.view(-1, 1, 1, 1), x.flip(3), x)


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image on the grid ``theta`` (n×2×3): bilinear, zero padding, corners off."""
    # align_corners=False as in IDM/BACON's torch 1.11 (DM's torch 1.2 used True; spec §9.18)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def scale(x: torch.Tensor, scale_x: torch.Tensor, scale_y: torch.Tensor) -> torch.Tensor:
    """Affine resampling with θ = [[s_x, 0, 0], [0, s_y, 0]] (s > 1 shrinks the content)."""
    zero = torch.zeros_like(scale_x)
    theta = torch.stack(
        [torch.stack([scale_x, zero, zero], 1), torch.stack([zero, scale_y, zero], 1)], 1
    )
    return affine(x, theta)


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Affine resampling with θ = [[cos a, −sin a, 0], [sin a, cos a, 0]], a in radians."""
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return affine(x, theta)


def _crop_radius(side: int, ratio: float) -> int:
    return int(side * ratio + 0.5)  # DC rounding: 4 at 28 and 32 px, 8 at 64 px


def _cutout_side(side: int, ratio: float) -> int:
    return int(side * ratio + 0.5)  # DC rounding: 14 at 28 px, 16 at 32 px, 32 at 64 px


# --------------------------------------------------------------------------------------------------
# The augmenter


class DSA:
    """DSA in single-op mode with the families of ``strategy`` (``"none"`` or ``""``: identity)."""

    def __init__(self, strategy: str = DEFAULT_STRATEGY, params: DSAParams | None = None) -> None:
        self.strategy = strategy
        self.params = params if params is not None else DSAParams()
        names = [] if strategy.lower() in ("", "none") else strategy.lower().split("_")
        for name in names:
            if name not in FAMILIES:
                close = difflib.get_close_matches(name, FAMILIES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DcbenchError(
                    f"unknown DSA family {name!r} in {strategy!r}{hint}; "
                    f"valid families: {', '.join(FAMILIES)}"
                )
        self.families: tuple[str, ...] = tuple(dict.fromkeys(names))

    def __repr__(self) -> str:
        return f"DSA(strategy={self.strategy!r}, params={self.params!r})"

    @property
    def enabled(self) -> bool:
        return bool(self.families)

    def sample(
        self,
        num_groups: int,
        height: int,
        width: int,
        generator: torch.Generator,
        *,
        one_family: bool,
    ) -> DSADraw:
        """Draw a family and its parameters for each of ``num_groups`` groups.

        ``one_family=True`` gives every group the same family (parameters still per group). The
        tensors live on the generator's device, except ``family`` (CPU).
        """
        if not self.enabled:
            raise DcbenchError("DSA strategy 'none' has nothing to sample")
        g, p, device = num_groups, self.params, generator.device

        def uniform() -> torch.Tensor:
            return torch.rand(g, generator=generator, device=device)

        def integers(low: int, high: int) -> torch.Tensor:  # uniform in [low, high)
            return torch.randint(low, high, (g,), generator=generator, device=device)

        num_families = len(self.families)
        family = torch.randint(
            num_families, (1 if one_family else g,), generator=generator, device=device
        )
        family = family.cpu().expand(g).contiguous() if one_family else family.cpu()
        crop_h, crop_w = _crop_radius(height, p.crop), _crop_radius(width, p.crop)
        cut_h, cut_w = _cutout_side(height, p.cutout), _cutout_side(width, p.cutout)
        return DSADraw(
            families=self.families,
            height=height,
            width=width,
            family=family,
            brightness=(uniform() - 0.5) * p.brightness,
            saturation=uniform() * p.saturation,
            contrast=uniform() + p.contrast,
            shift_h=integers(-crop_h, crop_h + 1),
            shift_w=integers(-crop_w, crop_w + 1),
            # centres in [0, H + (1 − k mod 2)): 0..H for even k (DC rand_cutout)
            cutout_h=integers(0, height + (1 - cut_h % 2)),
            cutout_w=integers(0, width + (1 - cut_w % 2)),
            flip=uniform() < p.flip,
            scale_x=uniform() * (p.scale - 1.0 / p.scale) + 1.0 / p.scale,
            scale_y=uniform() * (p.scale - 1.0 / p.scale) + 1.0 / p.scale,
            angle=(uniform() - 0.5) * 2.0 * math.radians(p.rotate),
        )

    def apply(
        self, x: torch.Tensor, draw: DSADraw, group_of_image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Transform image n of ``x`` (N×C×H×W) with group ``group_of_image[n]`` of ``draw``.

        ``group_of_image=None`` means image n uses group n (requires G == N). Images are processed
        in one pass per family present.
        """
        n, _, h, w = x.shape
        if (h, w) != (draw.height, draw.width):
            raise ValueError(f"draw is for {draw.height}×{draw.width} images, got {h}×{w}")
        if draw.families != self.families:
            raise ValueError(f"draw has families {draw.families}, this DSA has {self.families}")
        if group_of_image is None:
            if draw.num_groups != n:
                raise ValueError(f"{draw.num_groups} groups drawn for {n} images")
            group_of_image = torch.arange(n)
        if n == 0:
            return x
        draw = draw.to(x.device)
        groups = group_of_image.to(x.device)
        present = torch.unique(draw.family).tolist()
        if len(present) == 1:  # training and siamese modes: no regrouping
            return self._apply_family(present[0], x, draw, groups)
        image_family = draw.family.to(x.device)[groups]
        pieces, order = [], []
        for family in present:
            index = torch.nonzero(image_family == family).flatten()
            if index.numel():
                pieces.append(self._apply_family(family, x[index], draw, groups[index]))
                order.append(index)
        inverse = torch.argsort(torch.cat(order))
        return torch.cat(pieces)[inverse]

    def _apply_family(
        self, family: int, x: torch.Tensor, draw: DSADraw, groups: torch.Tensor
    ) -> torch.Tensor:
        name = draw.families[family]
        if name == "color":  # brightness → saturation → contrast (spec §1.3)
            x = brightness(x, draw.brightness[groups])
            x = saturation(x, draw.saturation[groups])
            return contrast(x, draw.contrast[groups])
        if name == "crop":
            return crop(x, draw.shift_h[groups], draw.shift_w[groups])
        if name == "cutout":
            cut_h = _cutout_side(draw.height, self.params.cutout)
            cut_w = _cutout_side(draw.width, self.params.cutout)
            return cutout(x, draw.cutout_h[groups], draw.cutout_w[groups], cut_h, cut_w)
        if name == "flip":
            return flip(x, draw.flip[groups])
        if name == "scale":
            return scale(x, draw.scale_x[groups], draw.scale_y[groups])
        if name == "rotate":
            return rotate(x, draw.angle[groups])
        raise AssertionError(name)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training mode: one family for the batch, independent parameters per image."""
        if not self.enabled:
            return x
        draw = self.sample(x.shape[0], x.shape[2], x.shape[3], generator, one_family=True)
        return self.apply(x, draw)

    def siamese(
        self, real: torch.Tensor, syn: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same transformation (family and parameters) for every image of both batches."""
        if not self.enabled:
            return real, syn
        draw = self.sample(1, real.shape[2], real.shape[3], generator, one_family=True)
        zeros_real = torch.zeros(real.shape[0], dtype=torch.long, device=real.device)
        zeros_syn = torch.zeros(syn.shape[0], dtype=torch.long, device=syn.device)
        return self.apply(real, draw, zeros_real), self.apply(syn, draw, zeros_syn)

    def siamese_by_group(
        self,
        real: torch.Tensor,
        real_groups: torch.Tensor,
        syn: torch.Tensor,
        syn_groups: torch.Tensor,
        num_groups: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Siamese DSA per group (e.g. class): one independent draw per group, family included.

        Real and synthetic images with the same group index get the same transformation.
        """
        if not self.enabled:
            return real, syn
        draw = self.sample(num_groups, real.shape[2], real.shape[3], generator, one_family=False)
        return self.apply(real, draw, real_groups), self.apply(syn, draw, syn_groups)
