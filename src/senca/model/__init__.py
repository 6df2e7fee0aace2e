"""SENCA-st model: graph transformer (ST), ResNet (H&E), shared neighbourhood cross-attention encoder."""

from senca.model._config import SencaConfig
from senca.model._senca import SENCA
from senca.model.layers import (
    GatedFusion,
    GraphTransformer,
    MLPEncoder,
    NeighbourhoodCrossAttention,
    SharedEncoderBlock,
)
from senca.model.module import SencaModule
from senca.model.resnet import ResNet, build_resnet, load_image_weights, resnet18, resnet50

__all__ = [
    "SENCA",
    "SencaConfig",
    "SencaModule",
    "GraphTransformer",
    "MLPEncoder",
    "NeighbourhoodCrossAttention",
    "SharedEncoderBlock",
    "GatedFusion",
    "ResNet",
    "resnet18",
    "resnet50",
    "build_resnet",
    "load_image_weights",
]
