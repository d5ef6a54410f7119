"""CartPole dynamics against hand-computed steps, termination, rollouts."""
import math

import numpy as np
import pytest

from engine.training import control


def test_one_step_from_rest_matches_hand_computation():
    # at rest, upright: temp = F / M = 10/1.1; theta_acc = -temp / (l (4/3 - m/M))
    s = np.zeros(4)
    nxt = control.dynamics(s, np.array(1))
    temp = 10.0 / 1.1
    theta_acc = -temp / (0.5 * (4.0 / 3.0 - 0.1 / 1.1))
    x_acc = temp - 0.05 * theta_acc / 1.1
    np.testing.assert_allclose(nxt, [0.0, 0.02 * x_acc, 0.0, 0.02 * theta_acc], rtol=1e-12)
    assert nxt[1] == pytest.approx(0.1951219512195122, rel=1e-12)
    assert nxt[3] == pytest.approx(-0.2926829268292683, rel=1e-12)


def test_step_with_tilt_and_velocity_matches_hand_computation():
    s = np.array([0.1, -0.2, 0.05, 0.3])
    nxt = control.dynamics(s, np.array(0))
    f, th, thd = -10.0, 0.05, 0.3
    c, sn = math.cos(th), math.sin(th)
    temp = (f + 0.05 * thd ** 2 * sn) / 1.1
    tacc = (9.8 * sn - c * temp) / (0.5 * (4 / 3 - 0.1 * c * c / 1.1))
    xacc = temp - 0.05 * tacc * c / 1.1
    np.testing.assert_allclose(nxt, [0.1 + 0.02 * -0.2, -0.2 + 0.02 * xacc, 0.05 + 0.02 * 0.3, 0.3 + 0.02 * tacc],
                               rtol=1e-12)
    # batched call agrees with the single one
    both = control.dynamics(np.stack([s, s]), np.array([0, 1]))
    np.testing.assert_allclose(both[0], nxt)
    assert both[1][1] > nxt[1]


def test_termination_and_episode_limit():
    assert control.terminal(np.array([2.5, 0, 0, 0]))
    assert control.terminal(np.array([0, 0, -0.25, 0]))
    assert not control.terminal(np.array([2.3, 0, 0.2, 0]))
    env = control.CartPole(3, seed=0, max_steps=5)
    for _ in range(5):
        _, r, done = env.step(np.array([0, 1, 0]))
    assert done.all() and (env.returns == 5).all()
    with pytest.raises(ValueError):
        env.step(np.array([2, 0, 0]))


def test_always_push_one_way_falls_fast_and_random_is_poor():
    r = control.rollout(lambda s: np.ones(len(s), dtype=int), 20, seed=0)
    assert r.returns.max() < 20
    rnd = control.rollout(control.random_policy(0), 200, seed=0)
    assert 15 < rnd.mean_return < 35
    rec = control.rollout(control.random_policy(0), 5, seed=1, record=True)
    assert rec.states.shape == (int(rec.returns.sum()), 4) and rec.actions.shape == (int(rec.returns.sum()),)


def test_rollouts_are_seeded():
    a = control.rollout(control.random_policy(3), 10, seed=7).returns
    b = control.rollout(control.random_policy(3), 10, seed=7).returns
    np.testing.assert_array_equal(a, b)
