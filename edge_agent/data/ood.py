"""Out-of-distribution (OOD) sources: the only data the central ever sees.

One interface serves both consolidation and int8 calibration (ONNX Runtime's
``CalibrationDataReader`` style): ``source.sample(n, generator)`` returns ``n``
model-ready inputs ``[n, *spec.shape]``.

Images follow the single-image distillation recipe (Asano & Saeed, "Extrapolating
from a single image to a thousand classes using distillation"): a random crop of
half the shorter side, then a random-resized crop (area 1/500 to 1), rotation and
shear, flips, colour jitter, and CutMix of the batch with its reversed copy. All of
it is vectorised: one affine grid and one ``grid_sample`` per batch, no per-sample
Python loop (profiling showed per-sample augmentation dominating consolidation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from edge_agent.data.images import image_files
from edge_agent.data.labeled import DataError
from edge_agent.inputs import InputSpec
from edge_agent.ood_sources import open_ood  # noqa: F401  (the registry opens every source)


class OODSource(Protocol):
    spec: InputSpec

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` model-ready inputs, float32 ``[n, *spec.shape]``."""
        ...


def default_photo_path() -> Path:
    """The bundled OOD photo (``edge_agent/assets/ood-photo.jpg``, 640x427 JPEG; attribution in ``assets/ATTRIBUTION.md``)."""
    return Path(str(resources.files("edge_agent") / "assets" / "ood-photo.jpg"))


@dataclass
class ImageAugment:
    """Knobs of the single-image recipe (angles in degrees, areas as fractions)."""

    area_min: float = 1 / 500
    area_max: float = 1.0
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_rotation: float = 30.0
    max_shear: float = 30.0
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    jitter: float = 0.4  # brightness, contrast and saturation factors in [1 - j, 1 + j]
    gray_p: float = 0.2
    # The knobs below move patches towards small grayscale stroke images (digits: bright strokes on a
    # dark background); their effect on Split-Digits val: benchmarks/results/ablations/dcl-ablations.md.
    invert_p: float = 0.5
    cutmix_p: float = 1.0
    lowres_p: float = 1.0  # probability of a 2x down-and-up resample (blur)
    autocontrast_p: float = 1.0  # probability of stretching a sample's pixel range to [0, 1]
    edges_p: float = 0.3  # probability of replacing a sample by its gradient magnitude (strokes on dark)
    # Digits are sparse bright strokes, centred on black: two more steps towards that (same ablation file).
    gamma_p: float = 0.5  # probability of x ** gamma, gamma log-uniform in gamma_range (>1: sparse bright on dark)
    gamma_range: tuple[float, float] = (1.0, 4.0)
    frame_p: float = 0.5  # probability of shrinking the patch into a black frame (scale uniform in frame_scale)
    frame_scale: tuple[float, float] = (0.5, 0.9)


def _read_rgb(path: Path, max_side: int) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = max_side / max(im.size)
            if scale < 1:
                im = im.resize(
                    (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BOX
                )
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read OOD image {path}: {str(e).splitlines()[0]}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ImageOOD:
    """Augmented patches of one image or of a folder of images."""

    def __init__(self, paths: list[Path], spec: InputSpec, augment: ImageAugment | None = None):
        if spec.kind != "image":
            raise DataError("an image OOD source needs an image model")
        if not paths:
            raise DataError("no OOD images given")
        self.spec = spec
        self.augment = augment or ImageAugment()
        out = max(spec.shape[1:])
        # Keep the source at a resolution where half the shorter side is ~4x the
        # output: crops stay sharp without paying for a multi-megapixel grid_sample.
        imgs = [_read_rgb(p, max_side=8 * out * 2) for p in paths]
        h = min(i.shape[1] for i in imgs)
        w = min(i.shape[2] for i in imgs)
        self.images = torch.stack([F.interpolate(i[None], size=(h, w), mode="area")[0] for i in imgs])
        self.paths = paths

    @classmethod
    def from_path(cls, path: str | Path, spec: InputSpec, augment: ImageAugment | None = None) -> ImageOOD:
        path = Path(path)
        if path.is_dir():
            files = image_files(path) or sorted(f for d in path.iterdir() if d.is_dir() for f in image_files(d))
            if not files:
                raise DataError(f"no images in OOD folder {path}")
            return cls(files, spec, augment)
        if not path.is_file():
            raise DataError(f"no OOD image at {path}")
        return cls([path], spec, augment)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        a = self.augment
        g = generator

        def u(lo: float, hi: float, size: int = n) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(size, generator=g)

        k, _, H, W = self.images.shape
        src = self.images[torch.randint(k, (n,), generator=g)] if k > 1 else self.images.expand(n, -1, -1, -1)
        # Crop 1: a square of half the shorter side, anywhere in the image (in pixels).
        s1 = min(H, W) / 2
        c1x = u(s1 / 2, W - s1 / 2)
        c1y = u(s1 / 2, H - s1 / 2)
        # Crop 2: random-resized crop inside crop 1 (torchvision semantics: area uniform, log-uniform ratio).
        area = u(a.area_min, a.area_max)
        ratio = torch.exp(u(math.log(a.ratio[0]), math.log(a.ratio[1])))
        w2 = (s1 * torch.sqrt(area * ratio)).clamp(max=s1)
        h2 = (s1 * torch.sqrt(area / ratio)).clamp(max=s1)
        cx = c1x - s1 / 2 + w2 / 2 + torch.rand(n, generator=g) * (s1 - w2)
        cy = c1y - s1 / 2 + h2 / 2 + torch.rand(n, generator=g) * (s1 - h2)
        # Rotation, shear and flips as one 2x2 map of output to input coordinates.
        rot = torch.deg2rad(u(-a.max_rotation, a.max_rotation))
        shear = torch.tan(torch.deg2rad(u(-a.max_shear, a.max_shear)))
        fx = torch.where(torch.rand(n, generator=g) < a.hflip_p, -1.0, 1.0)
        fy = torch.where(torch.rand(n, generator=g) < a.vflip_p, -1.0, 1.0)
        cos, sin = torch.cos(rot), torch.sin(rot)
        m00, m01 = cos * fx, (cos * shear - sin) * fy
        m10, m11 = sin * fx, (sin * shear + cos) * fy
        sx, sy = w2 / W, h2 / H  # half-sizes in normalized [-1, 1] units
        theta = torch.stack(
            [
                torch.stack([sx * m00, sx * m01, 2 * cx / W - 1], dim=1),
                torch.stack([sy * m10, sy * m11, 2 * cy / H - 1], dim=1),
            ],
            dim=1,
        )
        c, h, w = self.spec.shape
        grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
        x = F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x = self._colour(x, u, g)
        if a.cutmix_p > 0:
            x = cutmix_with_reverse(x, g, a.cutmix_p)
        x = x.clamp(0, 1)
        if c == 1:
            x = _luma(x)
        if a.edges_p > 0:
            x = torch.where((torch.rand(n, generator=g) < a.edges_p).view(n, 1, 1, 1), _edges(x), x)
        if a.lowres_p > 0:
            low = F.interpolate(F.avg_pool2d(x, 2), size=(h, w), mode="bilinear", align_corners=False)
            x = torch.where((torch.rand(n, generator=g) < a.lowres_p).view(n, 1, 1, 1), low, x)
        if a.autocontrast_p > 0:
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            stretched = (x - lo) / (hi - lo).clamp(min=1e-3)
            x = torch.where((torch.rand(n, generator=g) < a.autocontrast_p).view(n, 1, 1, 1), stretched, x)
        if a.invert_p > 0:
            inv = (torch.rand(n, generator=g) < a.invert_p).view(n, 1, 1, 1)
            x = torch.where(inv, 1 - x, x)
        if a.gamma_p > 0:
            lg0, lg1 = math.log(a.gamma_range[0]), math.log(a.gamma_range[1])
            gamma = torch.exp(u(lg0, lg1)).view(n, 1, 1, 1)
            x = torch.where((torch.rand(n, generator=g) < a.gamma_p).view(n, 1, 1, 1), x.clamp(min=0) ** gamma, x)
        if a.frame_p > 0:
            x = _frame(x, u(*a.frame_scale), torch.rand(n, generator=g) < a.frame_p, g)
        mean = torch.tensor(self.spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def _colour(self, x: torch.Tensor, u, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        j = self.augment.jitter
        if j > 0:
            x = x * u(1 - j, 1 + j).view(n, 1, 1, 1)  # brightness
            m = _luma(x).mean(dim=(2, 3), keepdim=True)
            x = (x - m) * u(1 - j, 1 + j).view(n, 1, 1, 1) + m  # contrast
            gray = _luma(x)
            x = (x - gray) * u(1 - j, 1 + j).view(n, 1, 1, 1) + gray  # saturation
        if self.augment.gray_p > 0:
            to_gray = (torch.rand(n, generator=g) < self.augment.gray_p).view(n, 1, 1, 1)
            x = torch.where(to_gray, _luma(x).expand_as(x), x)
        return x


def _frame(x: torch.Tensor, scale: torch.Tensor, apply: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shrink each selected sample by ``scale`` to a random place inside a black (0) frame."""
    n = x.shape[0]
    s = torch.where(apply, scale, torch.ones(n))
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (1 - s).view(n, 1)  # keep the patch inside the frame
    inv = 1 / s
    zeros = torch.zeros(n)
    theta = torch.stack(
        [torch.stack([inv, zeros, -shift[:, 0] * inv], 1), torch.stack([zeros, inv, -shift[:, 1] * inv], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude per channel, scaled so each sample's maximum is 1."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype)
    c = x.shape[1]
    kx = k.view(1, 1, 3, 3).expand(c, 1, 3, 3)
    ky = k.t().reshape(1, 1, 3, 3).expand(c, 1, 3, 3)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    mag = torch.sqrt(F.conv2d(xp, kx, groups=c) ** 2 + F.conv2d(xp, ky, groups=c) ** 2)
    return mag / mag.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-3)


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def cutmix_with_reverse(x: torch.Tensor, g: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """Paste a random box of the reversed batch into each sample (vectorised CutMix)."""
    n, _, h, w = x.shape
    lam = torch.rand(n, generator=g)
    bw = (w * torch.sqrt(1 - lam)).round()
    bh = (h * torch.sqrt(1 - lam)).round()
    cx = torch.rand(n, generator=g) * w
    cy = torch.rand(n, generator=g) * h
    x0, x1 = (cx - bw / 2).clamp(0, w), (cx + bw / 2).clamp(0, w)
    y0, y1 = (cy - bh / 2).clamp(0, h), (cy + bh / 2).clamp(0, h)
    xs = torch.arange(w).view(1, 1, w)
    ys = torch.arange(h).view(1, h, 1)
    box = (xs >= x0.view(n, 1, 1)) & (xs < x1.view(n, 1, 1)) & (ys >= y0.view(n, 1, 1)) & (ys < y1.view(n, 1, 1))
    box &= (torch.rand(n, generator=g) < p).view(n, 1, 1)
    return torch.where(box.unsqueeze(1), x.flip(0), x)


class NoiseOOD:
    """Gaussian noise in the model's input space: the baseline every real source should beat."""

    def __init__(self, spec: InputSpec):
        self.spec = spec

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((n, *self.spec.shape), generator=generator)


def open_noise_ood(source, spec: InputSpec, **augment) -> NoiseOOD:
    return NoiseOOD(spec)


def open_image_ood(source: str | Path | None, spec: InputSpec, **augment) -> ImageOOD:
    path = default_photo_path() if source is None else Path(source)
    return ImageOOD.from_path(path, spec, ImageAugment(**augment) if augment else None)
