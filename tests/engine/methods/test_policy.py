"""Policy distillation: the FP32 teacher balances, the W8A8 student keeps its return."""
import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.training.methods import policy


@pytest.fixture(scope="module")
def teacher():
    torch.set_num_threads(1)
    return policy.teacher_policy(0)


@pytest.mark.slow
def test_teacher_balances(teacher):
    assert teacher.mean_return >= 190            # the maximum is 200; random play gets about 22
    assert policy.teacher_policy(0) is teacher   # trained once per process, seeded


@pytest.mark.slow
def test_w8a8_student_is_close_to_teacher(teacher):
    r = policy.distill_policy(teacher.model, (8, 8), steps=150, eval_episodes=50)
    assert r.teacher_return >= 190
    assert r.student_return >= 0.9 * r.teacher_return
    assert r.student_return > 4 * r.random_return
    assert r.agreement > 0.9
    from engine.plans.layers import QuantLinear
    assert all(isinstance(getattr(r.student, n), QuantLinear) for n in ("fc1", "fc2", "fc3"))
    assert r.student.fc1.wq.bits == 8 and r.student.fc1.aq.bits == 8
    d = r.to_dict()
    assert d["plan"]["default"]["w_bits"] == 8 and d["return_ratio"] >= 0.9


def test_demonstrations_are_checked(tmp_path, teacher):
    bad = tmp_path / "bad.npz"
    np.savez(bad, states=np.zeros((5, 3), np.float32))
    with pytest.raises(UserError, match="shape"):
        policy.load_demonstrations(bad)
    with pytest.raises(UserError, match="does not exist"):
        policy.load_demonstrations(tmp_path / "missing.npz")
    with pytest.raises(UserError, match="0 or 1"):
        policy.check_demonstrations(np.zeros((4, 4)), np.array([0, 1, 2, 0]))
    with pytest.raises(UserError, match="NaN"):
        policy.check_demonstrations(np.full((2, 4), np.nan))


def test_user_demonstrations_train_the_student(tmp_path, teacher):
    from engine.training import control
    ro = control.rollout(policy.greedy(teacher.model), 5, seed=123, record=True)
    f = tmp_path / "demo.npz"
    np.savez(f, states=ro.states, actions=ro.actions)
    states, actions = policy.load_demonstrations(f)
    r = policy.distill_policy(teacher.model, (8, 8), states, actions, steps=60, eval_episodes=20, source=str(f))
    assert r.source == str(f) and r.states == len(states)
    assert r.student_return > 4 * r.random_return


def test_cli_policy_distill(capsys):
    from explorer.cli import main
    assert main(["policy-distill", "--bits", "8", "8", "--steps", "50", "--eval-episodes", "20", "--json"]) == 0
    import json
    out = json.loads(capsys.readouterr().out)
    assert out["teacher_return"] > 0 and "student_return" in out
    assert main(["policy-distill", "--bits", "9", "8"]) == 2
