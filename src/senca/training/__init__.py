"""Staged self-supervised training of SENCA-st: losses, augmentations, subgraph mini-batches."""

from senca.training.augment import PatchAugmenter
from senca.training.losses import (
    dec_loss,
    dec_target,
    neighbour_info_nce,
    nt_xent,
    reconstruction_loss,
    student_t_assignment,
)
from senca.training.optim import AdamW
from senca.training.sampler import SubgraphBatch, SubgraphSampler
from senca.training.trainer import SencaData, StagedTrainer, embed, stage_plan

__all__ = [
    "AdamW",
    "PatchAugmenter",
    "reconstruction_loss",
    "nt_xent",
    "neighbour_info_nce",
    "student_t_assignment",
    "dec_target",
    "dec_loss",
    "SubgraphBatch",
    "SubgraphSampler",
    "SencaData",
    "StagedTrainer",
    "embed",
    "stage_plan",
]
