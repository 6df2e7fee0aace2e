"""ResNet-18/50 in plain PyTorch with torchvision-identical state-dict keys.

torchvision cannot be installed beside the CPU build of torch used here, so the two
architectures are written out again. Module names and nesting follow
``torchvision.models.resnet`` exactly (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` ...), so a torchvision-format weight file (ImageNet or a
pathology-pretrained ResNet) loads with :func:`load_image_weights`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet50", "build_resnet", "load_image_weights"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with stride on the 3x3 (torchvision's "ResNet v1.5")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk + classifier with torchvision's module names.

    Parameters
    ----------
    block
        :class:`BasicBlock` or :class:`Bottleneck`.
    layers
        Number of blocks in each of the four stages.
    num_classes
        Size of ``fc``; kept only so that torchvision files load key for key. senca uses
        :meth:`forward_features` (the globally pooled trunk output) and never ``fc``.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.out_dim = 512 * block.expansion
        # Mean and standard deviation of the pixels (stain), of the stem and of each stage.
        self.texture_levels = tuple(2 * c for c in (3, 64, *(p * block.expansion for p in (64, 128, 256, 512))))
        self.texture_dim = sum(self.texture_levels)
        for m in self.modules():
            # Weights on the meta device are placeholders for loaded ones (SENCA.load): drawing
            # them there goes through torch's Python reference kernels, whose first use imports
            # TorchDynamo (about 1.5 s) in a process that may never need it.
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Channels-last convolutions run 30-40 % faster on the CPU (oneDNN) for the same values
        # up to rounding; the inputs are converted in the forward passes.
        self.to(memory_format=torch.channels_last)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        modules = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        modules += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled trunk output, shape ``(batch, out_dim)``."""
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward_texture(self, x: torch.Tensor) -> torch.Tensor:
        """Texture statistics: spatial mean and standard deviation of every stage's feature maps.

        The first- and second-order statistics of CNN feature maps describe texture (style)
        rather than layout, and they do so even for random weights (Gatys et al. 2015; Ulyanov
        et al. 2016): stain, nuclear density and fibre patterns survive, the position of each
        nucleus in the patch does not. Early stages see fine texture at the patch's full
        resolution, where the last stage of a small patch is only a pixel or two wide.

        Returns
        -------
        ``(batch, texture_dim)``: for the input pixels (the stain: colour mean and spread), the
        stem (after max-pooling) and ``layer1`` ... ``layer4`` in turn (sizes
        ``texture_levels``), the per-channel means then the per-channel standard deviations.
        """
        x = x.contiguous(memory_format=torch.channels_last)
        stats = [_moments(x)]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stats.append(_moments(x))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stats.append(_moments(x))
        return torch.cat(stats, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _moments(x: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial mean and standard deviation of ``(B, C, H, W)`` maps, ``(B, 2C)``."""
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
    # The epsilon keeps the gradient finite where a map is constant (sqrt'(0) is infinite).
    return torch.cat([mean, (var + 1e-6).sqrt()], 1)


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (randomly initialised), torchvision key layout."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (randomly initialised), torchvision key layout."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


_ARCHS = {"resnet18": resnet18, "resnet50": resnet50}


def build_resnet(arch: str) -> ResNet:
    """Build ``"resnet18"`` or ``"resnet50"``; any other name raises :class:`SencaInputError`."""
    if arch not in _ARCHS:
        raise SencaInputError(f"image backbone {arch!r}: expected one of {sorted(_ARCHS)}")
    return _ARCHS[arch]()


def _unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    # Training checkpoints often nest the weights; DataParallel prefixes every key with "module.".
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SencaInputError(f"image weights file {path}: expected a torchvision ResNet state dict (name -> tensor)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_image_weights(model: ResNet, path: str | Path) -> ResNet:
    """Load a torchvision-format ResNet weight file into ``model`` (strict key check).

    Parameters
    ----------
    model
        A :class:`ResNet` from :func:`resnet18` / :func:`resnet50`.
    path
        File written by ``torch.save(torchvision_model.state_dict(), path)`` (a wrapping
        ``{"state_dict": ...}`` and a ``module.`` prefix are accepted). The classifier
        ``fc.*`` may be absent or of any size (then it keeps its initial values), since
        senca never uses it.

    Returns
    -------
    The same ``model``, with weights loaded.

    Raises
    ------
    SencaInputError
        The file cannot be read, or its keys or shapes do not match the architecture;
        the message names the file and a few missing / unexpected keys.
    """
    path = Path(path)
    if not path.is_file():
        raise SencaInputError(f"image weights file {path}: not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or non-torch files
        raise SencaInputError(f"image weights file {path}: not a readable torch file ({err})") from err
    state = _unwrap_state_dict(obj, path)
    expected = model.state_dict()
    # The classifier is never used, so a headless or re-headed file is fine: fc.* is loaded
    # only when it has torchvision's 1000-class shape.
    head = {k: v for k, v in state.items() if k.startswith("fc.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    body_keys = {k for k in expected if not k.startswith("fc.")}
    missing = sorted(body_keys - state.keys())
    unexpected = sorted(state.keys() - body_keys)
    if missing or unexpected:
        arch = "resnet50" if isinstance(model.layer1[0], Bottleneck) else "resnet18"
        raise SencaInputError(
            f"image weights file {path}: keys do not match torchvision {arch} "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    wrong = [k for k in body_keys if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = sorted(wrong)[0]
        raise SencaInputError(
            f"image weights file {path}: tensor {k!r} has shape {tuple(state[k].shape)}, "
            f"expected {tuple(expected[k].shape)} ({len(wrong)} shape mismatches)"
        )
    if set(head) == {"fc.weight", "fc.bias"} and all(head[k].shape == expected[k].shape for k in head):
        state.update(head)
    model.load_state_dict(state, strict=False)
    logger.info("loaded image weights from %s (%d tensors)", path, len(state))
    return model
