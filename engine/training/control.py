"""A classic control task with no dependency beyond numpy: CartPole (Barto, Sutton & Anderson 1983).

The standard equations and constants (those of OpenAI Gym's CartPole-v0): a pole hinged on
a cart, the action pushes the cart left (0) or right (1) with a 10 N force, explicit Euler
steps of 0.02 s; the episode ends when the cart leaves [-2.4, 2.4], the pole leans more than
12 degrees, or after 200 steps. Reward 1 per step (the terminating step included), so an
episode's return is its length, 200 at best. Initial states are uniform in [-0.05, 0.05]^4.

``CartPole`` runs a batch of independent episodes in lock-step (vectorised numpy);
``rollout`` plays a policy on seeded episodes and returns their returns (and, if asked, the
visited states).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_CART + MASS_POLE
LENGTH = 0.5                      # half the pole's length
POLE_MASS_LENGTH = MASS_POLE * LENGTH
FORCE_MAG = 10.0
TAU = 0.02
THETA_LIMIT = 12 * 2 * math.pi / 360
X_LIMIT = 2.4
MAX_STEPS = 200
OBS_DIM = 4
N_ACTIONS = 2

Policy = Callable[[np.ndarray], np.ndarray]   # (B, 4) float states -> (B,) int actions


def dynamics(state: np.ndarray, action: np.ndarray) -> np.ndarray:
    """One Euler step for states (..., 4) = (x, x_dot, theta, theta_dot) and actions (...) in {0, 1}."""
    state = np.asarray(state, dtype=np.float64)
    x, x_dot, theta, theta_dot = (state[..., i] for i in range(4))
    force = np.where(np.asarray(action) == 1, FORCE_MAG, -FORCE_MAG)
    cos, sin = np.cos(theta), np.sin(theta)
    temp = (force + POLE_MASS_LENGTH * theta_dot ** 2 * sin) / TOTAL_MASS
    theta_acc = (GRAVITY * sin - cos * temp) / (LENGTH * (4.0 / 3.0 - MASS_POLE * cos ** 2 / TOTAL_MASS))
    x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS
    return np.stack([x + TAU * x_dot, x_dot + TAU * x_acc, theta + TAU * theta_dot, theta_dot + TAU * theta_acc],
                    axis=-1)


def terminal(state: np.ndarray) -> np.ndarray:
    state = np.asarray(state)
    return (np.abs(state[..., 0]) > X_LIMIT) | (np.abs(state[..., 2]) > THETA_LIMIT)


class CartPole:
    """``n`` CartPole episodes stepped together; finished episodes stay finished."""

    obs_dim = OBS_DIM
    n_actions = N_ACTIONS

    def __init__(self, n: int = 1, seed: int = 0, max_steps: int = MAX_STEPS):
        if n < 1:
            raise ValueError("n must be at least 1")
        self.n, self.max_steps = int(n), int(max_steps)
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> np.ndarray:
        self.state = self.rng.uniform(-0.05, 0.05, size=(self.n, OBS_DIM))
        self.done = np.zeros(self.n, dtype=bool)
        self.t = 0
        self.returns = np.zeros(self.n)
        return self.state.astype(np.float32)

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance the live episodes; returns (states, rewards, done) for all ``n``."""
        a = np.asarray(actions).reshape(self.n)
        if not np.isin(a, (0, 1)).all():
            raise ValueError("actions must be 0 (push left) or 1 (push right)")
        live = ~self.done
        nxt = dynamics(self.state, a)
        self.state = np.where(live[:, None], nxt, self.state)
        reward = live.astype(np.float64)
        self.returns += reward
        self.t += 1
        self.done = self.done | (live & terminal(self.state)) | (self.t >= self.max_steps)
        return self.state.astype(np.float32), reward, self.done.copy()


@dataclass
class Rollout:
    returns: np.ndarray                 # (episodes,)
    states: np.ndarray | None = None    # (N, 4) states at which the policy acted
    actions: np.ndarray | None = None   # (N,) its actions there

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())


def rollout(policy: Policy, episodes: int = 100, seed: int = 0, max_steps: int = MAX_STEPS,
            record: bool = False) -> Rollout:
    """Play ``policy`` on ``episodes`` seeded episodes (all at once)."""
    env = CartPole(episodes, seed, max_steps)
    s = env.reset()
    states, actions = [], []
    while not env.done.all():
        live = ~env.done
        a = np.asarray(policy(s)).reshape(-1).astype(np.int64)
        if record:
            states.append(s[live])
            actions.append(a[live])
        s, _, _ = env.step(a)
    if record:
        return Rollout(env.returns.copy(), np.concatenate(states), np.concatenate(actions))
    return Rollout(env.returns.copy())


def random_policy(seed: int = 0) -> Policy:
    rng = np.random.default_rng(seed)
    return lambda s: rng.integers(0, 2, size=len(s))
