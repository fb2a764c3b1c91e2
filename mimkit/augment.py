"""Training augmentation split between the data workers and the accelerator.

With ``data.augment: device`` the workers only decode each image, squash it to a fixed
square of ``data.decode_size`` pixels (uint8) and draw its crop box and flip, seeded per
sample like the CPU path. The batch then travels as uint8 (4x fewer bytes than float) and
the accelerator crops, resizes, flips and normalises all images at once with
``torchvision.ops.roi_align``: one kernel instead of a resize per image on the CPU.

Crop boxes follow torchvision's RandomResizedCrop sampling (area scale, aspect ratio 3/4 to
4/3, ten tries then a centre crop), measured on the squashed square.
"""

from __future__ import annotations

import functools
import math

import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.functional import pil_to_tensor
from torchvision.transforms.v2 import functional as TF

RATIO = (3.0 / 4.0, 4.0 / 3.0)


class DecodeForDevice:
    """CPU half: PIL RGB image or uint8 (3, H, W) tensor -> (uint8 (3, D, D) image, (5,) [top, left, height, width, flip])."""

    def __init__(self, decode_size: int, scale: tuple[float, float], hflip: bool) -> None:
        self.decode_size = decode_size
        self.scale = list(scale)
        self.hflip = hflip

    def __call__(self, img: Image.Image | Tensor) -> tuple[Tensor, Tensor]:
        D = self.decode_size
        if isinstance(img, Tensor):  # already decoded (data.cache): uint8 (3, H, W)
            x = img if img.shape[-2:] == (D, D) else TF.resize(img, [D, D], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        else:
            x = pil_to_tensor(img if img.size == (D, D) else img.resize((D, D), Image.BICUBIC))  # (3, D, D) uint8
        top, left, h, w = RandomResizedCrop.get_params(x, self.scale, list(RATIO))
        flip = float(self.hflip and torch.rand(()).item() < 0.5)
        return x, torch.tensor([top, left, h, w, flip], dtype=torch.float32)


def crop_resize_flip(images: Tensor, crops: Tensor, size: int, mean: list[float], std: list[float]) -> Tensor:
    """Accelerator half: uint8 (B, C, D, D) + crops (B, 5) -> normalised float (B, C, size, size).

    Each crop is resized with bilinear sampling averaged over ceil(crop / size) points per
    output pixel in each direction (``roi_align``'s adaptive sampling), which anti-aliases
    shrinking crops; growing crops are plain bilinear (align_corners=False). At the box's edges
    the samples may blend in the pixels just outside it rather than clamping to the box.
    """
    x = images.float().div_(255)  # (B, C, D, D)
    B = x.shape[0]
    top, left, h, w, flip = crops.to(x.device, torch.float32).unbind(1)  # (B,) each
    boxes = torch.stack([torch.arange(B, device=x.device, dtype=torch.float32), left, top, left + w, top + h], dim=1)
    out = roi_align(x, boxes, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    out = torch.where(flip.bool()[:, None, None, None], out.flip(-1), out)  # (B, C, size, size)
    mean_t, std_t = _channel_stats(tuple(mean), tuple(std), x.device)
    return (out - mean_t) / std_t


@functools.lru_cache(maxsize=8)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(1, C, 1, 1) mean and std on ``device``, copied there once rather than every batch
    (a copy from pageable host memory waits for the device)."""
    return torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1)


def finish_batch(batch: dict[str, Tensor], size: int, mean: list[float], std: list[float]) -> Tensor:
    """The model-ready images of a collated batch: cropped on the images' device when the batch
    carries ``crops`` (device augmentation); otherwise uint8 crops (CPU augmentation) scaled to
    [0, 1] and normalised, with the same functions and so the same values as a per-image
    ``ToDtype`` + ``Normalize``; float images pass as they are."""
    images = batch["images"]
    if "crops" in batch:
        return crop_resize_flip(images, batch["crops"], size, mean, std)
    if images.dtype != torch.uint8:
        return images
    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), mean, std)  # (B, C, size, size)


def default_decode_size(input_size: int) -> int:
    """Squash side when ``data.decode_size`` is unset: 8/7 of the crop (256 for 224), so full-image
    crops are mildly downsampled rather than upsampled."""
    return int(math.ceil(input_size * 8 / 7))
