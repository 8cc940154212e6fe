"""Dense training data: the references' rescale, crop, flip, photometric and colour augmentations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from evalsuite.sampling import seeded

from .readout import IGNORE
from .target import DenseTarget


# ---------------------------------------------------------------------------------------
# Training data
# ---------------------------------------------------------------------------------------
def long_side_rescale(rgb: np.ndarray, label: np.ndarray, gen: torch.Generator, ratio: tuple[float, float]):
    """Pixio's ``semseg/data/transform.py::resize``: the new long side is an integer drawn uniformly
    from [int(lo·L), int(hi·L)] of the image's own long side L; the short side is
    int(short·new/L + 0.5); image bicubic and mask nearest, with PIL."""
    h, w = rgb.shape[:2]
    long = max(h, w)
    new = int(torch.randint(int(long * ratio[0]), int(long * ratio[1]) + 1, (1,), generator=gen))
    if h > w:
        oh, ow = new, int(1.0 * w * new / h + 0.5)
    else:
        ow, oh = new, int(1.0 * h * new / w + 0.5)
    image = np.array(Image.fromarray(rgb).resize((ow, oh), Image.BICUBIC))
    mask = np.array(Image.fromarray(label).resize((ow, oh), Image.NEAREST))
    return image, mask


def short_side_rescale(image: torch.Tensor, target: torch.Tensor, gen: torch.Generator, ratio: tuple[float, float],
                       crop: tuple[int, int]):
    """mmseg's RandomResize (DINOv2's ADE20K config: scale (∞, crop) × U(lo, hi), aspect kept): the
    short side becomes crop·r (bilinear image, nearest mask)."""
    lo, hi = ratio
    r = lo + (hi - lo) * torch.rand(1, generator=gen).item()
    H, W = image.shape[-2:]
    factor = min(crop) * r / min(H, W)
    size = (max(1, int(H * factor + 0.5)), max(1, int(W * factor + 0.5)))
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    target = F.interpolate(target[None, None].float(), size=size, mode="nearest")[0, 0].to(target.dtype)
    return image, target


@dataclass(frozen=True)
class PhotometricDraws:
    """The random numbers of one mmseg PhotoMetricDistortion call (None: that step is skipped)."""

    brightness: float | None
    contrast: float | None
    contrast_first: bool
    saturation: float | None
    hue: int | None

    @classmethod
    def draw(cls, gen: torch.Generator) -> PhotometricDraws:
        """mmseg's defaults: brightness ±32, contrast and saturation ×U(0.5, 1.5), hue ±18 (integer in
        [−18, 17], numpy's ``randint``), each step with probability ½."""
        u = torch.rand(9, generator=gen).tolist()
        return cls(brightness=-32 + 64 * u[1] if u[0] < 0.5 else None, contrast=0.5 + u[3] if u[2] < 0.5 else None,
                   contrast_first=u[4] < 0.5, saturation=0.5 + u[6] if u[5] < 0.5 else None,
                   hue=math.floor(-18 + 36 * u[8]) if u[7] < 0.5 else None)


def photometric_distortion(rgb: np.ndarray, draws: PhotometricDraws) -> np.ndarray:
    """mmseg's PhotoMetricDistortion on a uint8 image (given in RGB; mmseg works in BGR, which only
    matters for the HSV conversion): every step is float → clip to 0–255 → uint8, as in mmseg."""
    import cv2

    def convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if draws.brightness is not None:
        bgr = convert(bgr, beta=draws.brightness)
    if draws.contrast_first and draws.contrast is not None:
        bgr = convert(bgr, alpha=draws.contrast)
    if draws.saturation is not None:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=draws.saturation)
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if draws.hue is not None:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + draws.hue) % 180
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not draws.contrast_first and draws.contrast is not None:
        bgr = convert(bgr, alpha=draws.contrast)
    return np.ascontiguousarray(bgr[..., ::-1])


def random_crop_box(target: torch.Tensor, crop: tuple[int, int], draw: Callable[[int], int], cat_max_ratio: float | None,
                    ignore: int) -> tuple[int, int]:
    """(top, left) of a random crop, offsets ``draw(margin + 1)``. With ``cat_max_ratio``, mmseg's
    RandomCrop: while no more than 10 checks have failed, a crop in which one class covers
    ``cat_max_ratio`` or more of the labelled pixels (or only one class is present) is drawn again;
    the 11th draw is kept unchecked."""
    H, W = target.shape[-2:]
    ch, cw = crop

    def box() -> tuple[int, int]:
        return draw(max(H - ch, 0) + 1), draw(max(W - cw, 0) + 1)

    y, x = box()
    if cat_max_ratio is not None:
        for _ in range(10):
            labels = target[y : y + ch, x : x + cw]
            counts = torch.bincount(labels[labels != ignore].long().flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio:
                break
            y, x = box()
    return y, x


def rotate(image: torch.Tensor, target: torch.Tensor, degrees: float):
    """Rotate about the centre (image bilinear, target nearest, borders 0)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = TF.rotate(image, degrees, interpolation=InterpolationMode.BILINEAR, fill=0.0)
    target = TF.rotate(target[None].float(), degrees, interpolation=InterpolationMode.NEAREST, fill=0.0)[0].to(target.dtype)
    return image, target


def colour_augment(image: torch.Tensor, gen: torch.Generator, gamma=(0.9, 1.1), brightness=(0.75, 1.25),
                   colour=(0.9, 1.1)) -> torch.Tensor:
    """The depth toolbox's ColorAug on a [0, 1] image. Unlike BTS/AdaBins it runs on 0–255 values:
    ``pixel ** γ`` with γ ∈ [0.9, 1.1] on 0–255 (a strong change), × brightness, × a gain per channel,
    clipped to 0–255."""
    u = torch.rand(5, generator=gen).tolist()
    image = (image * 255) ** (gamma[0] + (gamma[1] - gamma[0]) * u[0])
    image = image * (brightness[0] + (brightness[1] - brightness[0]) * u[1])
    gains = torch.tensor([colour[0] + (colour[1] - colour[0]) * v for v in u[2:5]]).view(3, 1, 1)
    return (image * gains).clamp(0, 255) / 255


class DenseTrainSet(Dataset):
    """The protocol's training augmentation of (rgb, target) pairs; item (index, epoch), seeded.

    Order (both references): rescale (Pixio: long side × [0.5, 2] with PIL; DINOv2: short side ×
    U(0.5, 2)), rotation (DINOv2 depth), random crop (pad first, as Pixio does; mmseg pads after the
    crop, which is the same geometry), flip, photometric or colour augmentation, normalisation.
    Padding is black before normalisation (Pixio) or zero after it (mmseg's Pad: the mean colour).
    """

    def __init__(self, base: Dataset, target: DenseTarget, p, mean, std, seed: int):
        self.base, self.target, self.p, self.seed = base, target, p, seed
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        gen, p = seeded(self.seed, epoch, index, 5), self.p
        rgb, target = self.base[index]
        if p.rescale_rule == "long-side":
            rgb, target = long_side_rescale(np.asarray(rgb), np.asarray(target), gen, p.rescale)
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
        target = torch.from_numpy(np.ascontiguousarray(target))
        if p.rescale_rule == "short-side":
            image, target = short_side_rescale(image, target, gen, p.rescale, p.crop)
        if p.rotate and torch.rand(1, generator=gen).item() < 0.5:
            image, target = rotate(image, target, -p.rotate + 2 * p.rotate * torch.rand(1, generator=gen).item())
        ch, cw = p.crop
        H, W = image.shape[-2:]
        black = p.train_pad == "black"
        if black:
            image = F.pad(image, (0, max(0, cw - W), 0, max(0, ch - H)))
        target = F.pad(target, (0, max(0, cw - W), 0, max(0, ch - H)), value=self.target.pad_value)
        y, x = random_crop_box(target, (ch, cw), lambda n: int(torch.randint(0, n, (1,), generator=gen)), p.cat_max_ratio,
                               IGNORE)
        image, target = image[:, y : y + ch, x : x + cw], target[y : y + ch, x : x + cw]
        if torch.rand(1, generator=gen).item() < 0.5:
            image, target = image.flip(-1), target.flip(-1)
        if p.photometric:
            uint8 = (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            image = torch.from_numpy(photometric_distortion(uint8, PhotometricDraws.draw(gen))).permute(2, 0, 1).float() / 255
        if p.colour_augment and torch.rand(1, generator=gen).item() < 0.5:
            image = colour_augment(image, gen)
        image = (image - self.mean) / self.std
        if not black:  # mmseg's Pad after Normalize: zeros, i.e. the mean colour
            image = F.pad(image, (0, cw - image.shape[-1], 0, ch - image.shape[-2]))
        return image, self.target.as_target(target)


def collate(batch):
    images, targets = zip(*batch)
    return {"images": torch.stack(images), "targets": torch.stack(targets)}


def to_input(rgb: np.ndarray, mean, std, device) -> torch.Tensor:
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
    return ((image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None].to(device)
