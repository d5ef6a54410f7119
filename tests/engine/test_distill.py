"""Distillation (Apprentice) carries the teacher's knowledge: an effect a stub could not fake."""
import dataclasses

import torch
import torch.nn.functional as F

from engine.evaluation import Settings
from engine.explore.pipeline import evaluate_plan
from engine.models.baselines import load_baseline
from engine.models.data import load_dataset
from engine.plans.plan import Plan
from engine.training.distill import kd_loss


def test_kd_loss_is_ce_plus_scaled_kl():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    p_t = F.softmax(t / 2, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 2, 1))).sum(1).mean()
    expected = 0.3 * F.cross_entropy(s, y) + 0.7 * 4 * kl
    assert torch.allclose(kd_loss(s, t, y, alpha=0.3, beta=0.7, temperature=2.0), expected, atol=1e-6)
    assert kd_loss(t, t, y, alpha=0.0).item() == 0.0  # a student equal to its teacher has nothing to learn


def test_distillation_keeps_the_teachers_function_when_labels_say_nothing():
    """Train on labels that are all class 0: alone the student collapses onto class 0; with the
    FP32 teacher's soft targets it keeps agreeing with the teacher on validation."""
    data = load_dataset("digits")
    teacher = load_baseline("mlp", "digits", data).eval()
    blind = dataclasses.replace(data, y_train=torch.zeros_like(data.y_train))
    with torch.no_grad():
        t_pred = teacher(data.x_val).argmax(1)

    def agreement(distill: bool) -> float:
        run = evaluate_plan("mlp", "digits", Plan.uniform(4, 4), Settings(steps=40, distill=distill, seed=0),
                            baseline=teacher, data=blind)
        model = run.applied.model.eval()
        with torch.no_grad():
            return float((model(data.x_val).argmax(1) == t_pred).float().mean())

    plain, distilled = agreement(False), agreement(True)
    print(f"agreement with the teacher: hard labels {plain:.3f}, distilled {distilled:.3f}")
    assert plain < 0.5, plain          # hard labels alone taught "always class 0"
    assert distilled > plain + 0.4, (plain, distilled)  # the teacher's soft targets kept its function
