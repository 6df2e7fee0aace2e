"""AdamW on torch's multi-tensor kernels, without ``torch.optim``.

``torch.optim``'s optimizers import TorchDynamo on their first use (their methods are wrapped to
keep ``torch.compile`` out), about 1.5 CPU seconds in every process that trains, and their
per-parameter Python bookkeeping cost about 2 ms a step on a model of 58 small tensors. This
one is the same arithmetic as ``torch.optim.AdamW(foreach=True)`` (same kernels, in the same
order, with the same scalars), so it gives the same parameters bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["AdamW"]


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    Parameters
    ----------
    params
        Parameters to optimise (the first group).
    lr
        Learning rate.
    weight_decay
        Decoupled weight decay: each step multiplies the parameters by ``1 - lr * weight_decay``.
    betas
        Decay rates of the first and second moment estimates.
    eps
        Added to the root of the second moment estimate.

    Notes
    -----
    As in ``torch.optim``, a parameter whose gradient is ``None`` is left alone in a step (no
    decay, no moment update) and counts its own steps for the bias correction, so parameters
    that first receive gradients in a later training stage start their moments fresh.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.param_groups: list[list[torch.nn.Parameter]] = []
        # Per parameter: (first moment, second moment, steps taken).
        self.state: dict[torch.nn.Parameter, list] = {}
        self.add_param_group(params)

    def add_param_group(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Optimise more parameters (with the same settings), e.g. ones created after the start."""
        group = list(params)
        known = {p for g in self.param_groups for p in g}
        if any(p in known for p in group):
            raise ValueError("AdamW: a parameter appears in more than one group")
        self.param_groups.append(group)

    def zero_grad(self) -> None:
        """Drop every gradient (``set_to_none``): the next backward allocates fresh ones."""
        for group in self.param_groups:
            for p in group:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        beta1, beta2 = self.betas
        for group in self.param_groups:
            params = [p for p in group if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            states = []
            for p in params:
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = [torch.zeros_like(p, memory_format=torch.preserve_format),
                                             torch.zeros_like(p, memory_format=torch.preserve_format), 0]
                state[2] += 1
                states.append(state)
            exp_avgs = [s[0] for s in states]
            exp_avg_sqs = [s[1] for s in states]
            if self.weight_decay != 0:
                torch._foreach_mul_(params, 1 - self.lr * self.weight_decay)
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            step_sizes = [(self.lr / (1 - beta1 ** float(s[2]))) * -1 for s in states]
            bias_correction2_sqrt = [(1 - beta2 ** float(s[2])) ** 0.5 for s in states]
            denominators = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denominators, bias_correction2_sqrt)
            torch._foreach_add_(denominators, self.eps)
            torch._foreach_addcdiv_(params, exp_avgs, denominators, step_sizes)
