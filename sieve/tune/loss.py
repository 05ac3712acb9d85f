"""The tuning loss, pure functions of logits.

* task loss: mean NLL of the gold continuation's tokens (labels ``−100`` elsewhere),
  ``CE = −(1/N) Σ_t log softmax(z_t)[y_t]`` over the ``N`` labelled positions of a batch;
* distillation (Minitron / SquareHead style recovery): per token
  ``KL_t = T² · Σ_v p_v (log p_v − log q_v)`` with ``p = softmax(z_dense/T)``, ``q = softmax(z/T)``,
  averaged over the real (unpadded) tokens — of the task batch (context and answer) and of general
  text blocks;
* combined: ``CE + w · ((1 − g) · KL_task + g · KL_general)`` (``w`` = ``distill.weight``,
  ``g`` = ``distill.general_mix``; ``g = 0`` distils on the task text only, ``g = 1`` on general
  text only: the ablation's ends).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sieve.tune.config import DistillSettings
from sieve.tune.data import IGNORE


def continuation_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over the labelled positions (logits ``(B, L, V)``, labels ``(B, L)``)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None,
               temperature: float = 1.0) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` per token, mean over ``mask`` (all when ``None``)."""
    t = temperature
    log_q = F.log_softmax(student.float() / t, -1)
    log_p = F.log_softmax(teacher.float() / t, -1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1) * t * t
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def combined(ce: torch.Tensor, kl_task: torch.Tensor | None, kl_general: torch.Tensor | None,
             settings: DistillSettings | None) -> torch.Tensor:
    """``CE + w · ((1 − g) · KL_task + g · KL_general)``; just ``CE`` without distillation."""
    if settings is None:
        return ce
    total = ce
    if kl_task is not None and settings.general_mix < 1:
        total = total + settings.weight * (1 - settings.general_mix) * kl_task
    if kl_general is not None and settings.general_mix > 0:
        total = total + settings.weight * settings.general_mix * kl_general
    return total
