"""Losses of the three levels of SENCA-st.

- spot level: :func:`reconstruction_loss`, :func:`nt_xent` (two augmented views of a patch agree);
- neighbourhood level: :func:`neighbour_info_nce` (cross-modal, same spot + spatial neighbours
  as positives, sampled negatives: O(batch x negatives), never spots x spots);
- region level: :func:`student_t_assignment`, :func:`dec_target`, :func:`dec_loss` (DEC).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from senca.graph.ops import scatter_sum

__all__ = [
    "reconstruction_loss",
    "nt_xent",
    "neighbour_info_nce",
    "student_t_assignment",
    "dec_target",
    "dec_loss",
]


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between reconstruction and ST input."""
    return F.mse_loss(pred, target)


def nt_xent(view1: torch.Tensor, view2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR loss between two views of the same mini-batch of patches.

    Each patch's other view is its positive; the other ``2B - 2`` views of the mini-batch are
    negatives. Memory is (2B)^2 for a mini-batch of ``B`` patches (never the whole section).
    """
    z = F.normalize(torch.cat([view1, view2]), dim=-1)
    b = view1.shape[0]
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, target)


def _one_way_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    anchors: torch.Tensor,
    nbr_src: torch.Tensor,
    nbr_dst: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    neighbour_weight: float,
) -> torch.Tensor:
    # Logits are cosine / temperature <= 1 / temperature; shifting by that bound keeps exp() finite.
    shift = 1.0 / temperature
    n = a.shape[0]
    s_self = (a[anchors] * b[anchors]).sum(-1) / temperature - shift
    s_neg = a[anchors] @ b[negatives].T / temperature - shift
    denom = s_self.exp() + s_neg.exp().sum(-1)
    log_pos = s_self
    if neighbour_weight > 0 and nbr_src.numel():
        s_nbr = (a[nbr_dst] * b[nbr_src]).sum(-1) / temperature - shift
        # Map each anchor to its row in the batch so that neighbour terms can be scattered to it.
        row = torch.full((n,), -1, dtype=torch.long, device=a.device)
        row[anchors] = torch.arange(anchors.numel(), device=a.device)
        dst_row = row[nbr_dst]
        denom = denom + scatter_sum(s_nbr.exp(), dst_row, anchors.numel())
        n_nbr = scatter_sum(torch.ones_like(s_nbr), dst_row, anchors.numel())
        nbr_log_sum = scatter_sum(s_nbr, dst_row, anchors.numel())
        log_denom = denom.log()
        # Multi-positive (SupCon-style) average: self with weight 1, each neighbour with
        # neighbour_weight / |N(i)| so that a spot's neighbourhood counts as much as any other.
        w_nbr = torch.where(n_nbr > 0, torch.full_like(n_nbr, neighbour_weight), torch.zeros_like(n_nbr))
        nbr_term = torch.where(n_nbr > 0, nbr_log_sum / n_nbr.clamp(min=1) - log_denom, torch.zeros_like(n_nbr))
        loss = -((log_pos - log_denom) + w_nbr * nbr_term) / (1 + w_nbr)
        return loss.mean()
    return -(log_pos - denom.log()).mean()


def neighbour_info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    anchors: torch.Tensor,
    edge_index: torch.Tensor | None,
    negatives: torch.Tensor,
    temperature: float = 0.5,
    neighbour_weight: float = 0.5,
) -> torch.Tensor:
    """Symmetric cross-modal InfoNCE with spatial neighbours as extra positives.

    For an anchor spot ``i``, the positive of ``a_i`` is ``b_i`` (same spot, other modality)
    and, with weight ``neighbour_weight``, ``b_j`` for the spatial neighbours ``j`` of ``i``;
    negatives are ``b`` at the sampled ``negatives``. The loss is averaged over both
    directions (a -> b and b -> a).

    Parameters
    ----------
    a, b
        ``(n, d)`` embeddings of the two modalities (cosine similarity is used).
    anchors
        Indices of the spots the loss is computed on (the seed spots of a mini-batch).
    edge_index
        ``(2, E)`` spatial graph without self loops (row 0 neighbour, row 1 spot), or ``None``
        for same-spot positives only.
    negatives
        Indices of the ``M`` sampled negatives; memory is O(anchors x M + E).
    temperature
        Softmax temperature.
    neighbour_weight
        Total weight of a spot's neighbours as positives relative to the spot itself.
    """
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    if edge_index is None or neighbour_weight <= 0:
        nbr_src = nbr_dst = torch.empty(0, dtype=torch.long, device=a.device)
    else:
        is_anchor = torch.zeros(a.shape[0], dtype=torch.bool, device=a.device)
        is_anchor[anchors] = True
        keep = is_anchor[edge_index[1]] & (edge_index[0] != edge_index[1])
        nbr_src, nbr_dst = edge_index[0, keep], edge_index[1, keep]
    args = (anchors, nbr_src, nbr_dst, negatives, temperature, neighbour_weight)
    return 0.5 * (_one_way_nce(a, b, *args) + _one_way_nce(b, a, *args))


def student_t_assignment(z: torch.Tensor, centres: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """DEC soft assignment ``q_ij`` of spots to centres (Student-t kernel), rows sum to 1."""
    dist2 = (z.unsqueeze(1) - centres.unsqueeze(0)).pow(2).sum(-1)  # (n, k)
    q = (1.0 + dist2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(-1, keepdim=True)


def dec_target(q: torch.Tensor, balance: float = 1.0) -> torch.Tensor:
    """Sharpened target ``p_ij = (q_ij^2 / f_j^balance) / sum_j'``, ``f_j`` the soft cluster size.

    ``balance=1`` is DEC's target, which favours clusters of equal size; ``0`` only sharpens,
    leaving a dominant region (e.g. a large tumour area) whole.
    """
    w = q.pow(2) / q.sum(0, keepdim=True).pow(balance)
    return (w / w.sum(-1, keepdim=True)).detach()


def dec_loss(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``KL(P || Q)`` averaged over spots."""
    return (p * (p.clamp(min=1e-12).log() - q.clamp(min=1e-12).log())).sum(-1).mean()
