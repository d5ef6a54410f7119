"""Knowledge distillation from the full-precision teacher (Apprentice, Mishra & Marr 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            alpha: float = 1.0, beta: float = 1.0, temperature: float = 2.0) -> torch.Tensor:
    """alpha * CE(student, y) + beta * T^2 * KL(teacher_T || student_T).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard ones.
    """
    ce = F.cross_entropy(student_logits, targets)
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return alpha * ce + beta * t * t * kl
