"""Consensus of several clusterings of the same spots (e.g. training restarts)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.metrics import adjusted_rand_score

from senca.errors import SencaInputError
from senca.evaluation import match_regions

__all__ = ["Consensus", "consensus_labels"]


class Consensus(NamedTuple):
    """Result of :func:`consensus_labels`."""

    labels: np.ndarray
    confidence: np.ndarray
    reference: int
    agreement: float | None


def consensus_labels(labelings: list[np.ndarray], confidences: list[np.ndarray] | None = None) -> Consensus:
    """Per-spot majority vote of several clusterings, after aligning their region names.

    The reference is, among the clusterings with the most regions, the one that agrees best
    with the others (highest summed ARI): the clusterings were asked for the same number of
    regions, and one that lost a region (a component left empty, a scattered region absorbed by
    the spatial refinement) would drop it from the consensus too. Every clustering's regions
    are renamed after the reference region they overlap most (one to one, Hungarian
    matching), then each spot takes the region most clusterings give it (ties: the
    reference's). O(spots x clusterings + regions^3): no spots x spots matrix.

    Parameters
    ----------
    labelings
        One label array per clustering, all over the same spots in the same order.
    confidences
        Optional per-spot confidence of each clustering (e.g. the GMM posterior).

    Returns
    -------
    :class:`Consensus`: ``labels`` (the reference's names); per spot ``confidence``, the mean
    over clusterings of their confidence where they agree with the consensus and 0 where they
    do not (the fraction that agree when ``confidences`` is ``None``); ``reference``, the
    index of the reference clustering; ``agreement``, the mean ARI over pairs of clusterings
    (``None`` for one clustering).
    """
    labelings = [np.asarray(labels).astype(str) for labels in labelings]
    if not labelings or len({len(labels) for labels in labelings}) != 1:
        raise SencaInputError("consensus: expected one or more label arrays of the same length")
    if confidences is None:
        confidences = [np.ones(len(labelings[0])) for _ in labelings]
    agreement = np.array([[adjusted_rand_score(a, b) for b in labelings] for a in labelings])
    n_regions = np.array([len(np.unique(labels)) for labels in labelings])
    reference = int(np.argmax(np.where(n_regions == n_regions.max(), agreement.sum(axis=1), -np.inf)))
    aligned = np.vstack([_align(labels, labelings[reference]) for labels in labelings])
    names, codes = np.unique(aligned, return_inverse=True)
    codes = codes.reshape(aligned.shape)
    votes = np.zeros((len(names), aligned.shape[1]))
    np.add.at(votes, (codes, np.arange(aligned.shape[1])[None, :].repeat(len(labelings), 0)), 1)
    reference_codes = codes[reference]
    top = votes.max(axis=0)
    winner = np.where(votes[reference_codes, np.arange(aligned.shape[1])] == top, reference_codes, votes.argmax(axis=0))
    consensus = names[winner]
    agree = aligned == consensus[None, :]
    confidence = (agree * np.vstack([np.asarray(c, dtype=float) for c in confidences])).mean(axis=0)
    n = len(labelings)
    mean_pairwise = float(agreement[np.triu_indices(n, k=1)].mean()) if n > 1 else None
    return Consensus(consensus, confidence, reference, mean_pairwise)


def _align(labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rename ``labels`` after the reference regions they overlap most (one to one)."""
    mapping = match_regions(reference, labels, ignore=None)
    # A region with no partner (more regions than the reference has) keeps a name of its own.
    return np.array([mapping[label] or f"{label} (unmatched)" for label in labels], dtype=object).astype(str)
