"""Dense inference: padding to the patch multiple and sliding-window prediction (mmseg's slide mode)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------
def centre_padding(size: int, multiple: int) -> tuple[int, int]:
    """DINOv2's CenterPadding: (before, after) with the odd pixel after."""
    pad = math.ceil(size / multiple) * multiple - size
    return pad // 2, pad - pad // 2


def pad_to_multiple(images: torch.Tensor, multiple: int, mode: str) -> torch.Tensor:
    """``right``: zeros right/bottom; ``centre``: DINOv2's CenterPadding. Zeros of the normalised
    image, i.e. the mean colour."""
    H, W = images.shape[-2:]
    if mode == "centre":
        (top, bottom), (left, right) = centre_padding(H, multiple), centre_padding(W, multiple)
        return F.pad(images, (left, right, top, bottom))
    return F.pad(images, (0, -W % multiple, 0, -H % multiple))


def window_starts(length: int, window: int, stride: int, placement: str = "flush") -> list[int]:
    """Window offsets covering [0, length).

    ``flush`` (mmseg's slide): every ``stride``, the last window moved flush with the end.
    ``pixio`` (Pixio's ``evaluate``/``infer_model``): 0, stride, 2·stride, … while the offset is
    inside the image; windows that run past the end are zero-padded by the caller.
    """
    if placement == "pixio":
        return list(range(0, length, stride))
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def slide_inference(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, window: int, stride: int,
                    placement: str = "flush", merge: str = "mean", chunk: int = 32) -> torch.Tensor:
    """Predictions of window×window crops merged over the image.

    ``merge="mean"`` averages the overlapping outputs (mmseg's slide mode; Pixio's depth);
    ``"softmax-sum"`` sums the windows' softmax probabilities over classes (Pixio's segmentation).
    Images (or windows, with ``placement="pixio"``) smaller than the window are zero-padded to it
    bottom/right, then cropped back. Crops of one size run through the model ``chunk`` at a time.
    """
    B, _, H, W = images.shape
    ys = window_starts(H if placement == "pixio" else max(H, window), window, stride, placement)
    xs = window_starts(W if placement == "pixio" else max(W, window), window, stride, placement)
    Hp, Wp = max(H, ys[-1] + window), max(W, xs[-1] + window)
    padded = F.pad(images, (0, Wp - W, 0, Hp - H))
    boxes = [(y, x) for y in ys for x in xs]
    total, count = None, torch.zeros(1, 1, Hp, Wp, device=images.device)
    for start in range(0, len(boxes), chunk):
        part = boxes[start : start + chunk]
        crops = torch.cat([padded[..., y : y + window, x : x + window] for y, x in part])  # (len(part)·B)×3×w×w
        outs = predict(crops)
        if merge == "softmax-sum":
            outs = outs.softmax(dim=1)
        for (y, x), out in zip(part, outs.split(B)):
            if total is None:
                total = torch.zeros(B, out.shape[1], Hp, Wp, device=images.device, dtype=out.dtype)
            total[..., y : y + window, x : x + window] += out
            count[..., y : y + window, x : x + window] += 1
    merged = total if merge == "softmax-sum" else total / count
    return merged[..., :H, :W]
