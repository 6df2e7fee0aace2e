"""Augmentations of H&E patches for the self-supervised image views.

H&E has no canonical orientation, so flips and 90-degree rotations are free; small crops
(resized back) and colour jitter (brightness, contrast, saturation) mimic staining and
scanning variation. All randomness comes from an explicit :class:`torch.Generator`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["PatchAugmenter", "patches_to_tensor", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def patches_to_tensor(patches: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, P, P)`` -> float in [0, 1]."""
    return patches.float() / 255.0


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class PatchAugmenter:
    """Random flip + 90-degree rotation + small crop + colour jitter, vectorised over a batch.

    Parameters
    ----------
    crop_scale
        Smallest crop side as a fraction of the patch side (1 disables cropping).
    jitter
        Brightness / contrast / saturation factors are drawn from ``[1 - jitter, 1 + jitter]``.
    """

    def __init__(self, crop_scale: float = 0.8, jitter: float = 0.2):
        self.crop_scale = crop_scale
        self.jitter = jitter

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment float patches in [0, 1] and return them ImageNet-normalised."""
        b = x.shape[0]

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(b, generator=generator).to(x.device)

        # Flip, rotation, crop scale and offset in one affine map sampled with grid_sample.
        k = torch.randint(0, 4, (b,), generator=generator).to(x.device)
        angle = k.float() * (torch.pi / 2)
        flip = torch.where(torch.rand(b, generator=generator).to(x.device) < 0.5, -1.0, 1.0)
        scale = uniform(self.crop_scale, 1.0)
        shift_x = (1 - scale) * uniform(-1.0, 1.0)
        shift_y = (1 - scale) * uniform(-1.0, 1.0)
        cos, sin = torch.cos(angle).round(), torch.sin(angle).round()
        theta = torch.stack(
            [
                torch.stack([scale * cos * flip, -scale * sin, shift_x], -1),
                torch.stack([scale * sin * flip, scale * cos, shift_y], -1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

        j = self.jitter
        x = x * uniform(1 - j, 1 + j).view(b, 1, 1, 1)
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        mean_gray = gray.mean(dim=(2, 3), keepdim=True)
        x = (x - mean_gray) * uniform(1 - j, 1 + j).view(b, 1, 1, 1) + mean_gray
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - gray) * uniform(1 - j, 1 + j).view(b, 1, 1, 1) + gray
        return _normalise(x.clamp(0.0, 1.0))

    @staticmethod
    def plain(x: torch.Tensor) -> torch.Tensor:
        """No augmentation, only ImageNet normalisation (for feature extraction)."""
        return _normalise(x)
