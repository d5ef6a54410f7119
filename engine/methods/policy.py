"""Low-precision policy distillation: a full-precision control policy distilled into a
low-precision student through the plan machinery, judged by task return.

The task is CartPole (``engine.training.control``, 200-step episodes). The teacher is a small FP32
MLP (4 -> 32 -> 32 -> 2, ReLU) trained in seconds by the cross-entropy method (a diagonal
Gaussian over its parameters, seeded; greedy actions). The student is
``engine.plans.apply.apply_plan(teacher, plan)``: the teacher's weights with the plan's fake
quantizers, calibrated on visited states, then trained to match the teacher's action
distribution, ``T^2 KL(teacher_T || student_T)``, on states from teacher rollouts; optional
DAgger rounds add the states the *student* visits, labelled by the teacher. User-supplied
data (an ``.npz`` with ``states`` (N, 4) and ``actions`` (N,)) replaces the rollouts: the
student then learns the given actions (cross-entropy). Both are evaluated greedily on the
same seeded episodes.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import UserError
from engine.plans.apply import apply_plan, calibrate
from engine.plans.plan import Plan
from engine.training import control


class PolicyNet(nn.Module):
    """An MLP policy: state -> action logits."""

    def __init__(self, obs_dim: int = control.OBS_DIM, n_actions: int = control.N_ACTIONS, hidden=(32, 32)):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], n_actions)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def greedy(model: nn.Module) -> control.Policy:
    """The policy that takes the action with the largest logit."""
    model.eval()

    def act(s: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(s, dtype=torch.float32)).argmax(1).numpy()
    return act


# ============================================================================ teacher (CEM)

def _flat_shapes(net: PolicyNet):
    return [(n, p.shape) for n, p in net.named_parameters()]


def _batched_logits(theta: np.ndarray, shapes, s: np.ndarray) -> np.ndarray:
    """Logits of P parameter vectors on their own (P, E, 4) states."""
    i = 0
    params = {}
    for n, shp in shapes:
        k = int(np.prod(shp))
        params[n] = theta[:, i:i + k].reshape(theta.shape[0], *shp)
        i += k
    h = np.maximum(np.einsum("pei,pji->pej", s, params["fc1.weight"]) + params["fc1.bias"][:, None], 0)
    h = np.maximum(np.einsum("pei,pji->pej", h, params["fc2.weight"]) + params["fc2.bias"][:, None], 0)
    return np.einsum("pei,pji->pej", h, params["fc3.weight"]) + params["fc3.bias"][:, None]


def _population_returns(theta: np.ndarray, shapes, episodes: int, seed: int) -> np.ndarray:
    p = theta.shape[0]
    env = control.CartPole(p * episodes, seed)
    s = env.reset()
    while not env.done.all():
        logits = _batched_logits(theta, shapes, s.reshape(p, episodes, -1).astype(np.float64))
        s, _, _ = env.step(logits.argmax(-1).reshape(-1))
    return env.returns.reshape(p, episodes).mean(1)


@dataclass
class TeacherResult:
    model: PolicyNet
    mean_return: float               # greedy, on ``eval_episodes`` fresh seeded episodes
    iterations: int
    history: list[float] = field(default_factory=list)   # best population mean per iteration
    wall_s: float = 0.0


def train_teacher(seed: int = 0, hidden=(32, 32), population: int = 48, elite: float = 0.2,
                  episodes: int = 4, iterations: int = 40, init_std: float = 0.5,
                  eval_episodes: int = 100) -> TeacherResult:
    """Cross-entropy method on the MLP's parameters, stopped once the elite mean reaches 200."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    net = PolicyNet(hidden=hidden)
    shapes = _flat_shapes(net)
    mean = torch.cat([p.detach().flatten() for p in net.parameters()]).double().numpy()
    std = np.full_like(mean, init_std)
    rng = np.random.default_rng(seed)
    n_elite = max(2, int(round(elite * population)))
    history = []
    it = 0
    for it in range(1, iterations + 1):
        theta = mean + std * rng.standard_normal((population, mean.size))
        theta[0] = mean
        r = _population_returns(theta, shapes, episodes, seed * 100003 + it)
        top = np.argsort(-r)[:n_elite]
        mean, std = theta[top].mean(0), theta[top].std(0) + 0.02
        history.append(float(r[top].mean()))
        if r[top].mean() >= control.MAX_STEPS and r[top[0]] >= control.MAX_STEPS:
            break
    with torch.no_grad():
        i = 0
        for p in net.parameters():
            k = p.numel()
            p.copy_(torch.from_numpy(mean[i:i + k]).reshape(p.shape).float())
            i += k
    net.eval()
    ret = control.rollout(greedy(net), eval_episodes, seed=10_000 + seed).mean_return
    return TeacherResult(net, ret, it, history, round(time.perf_counter() - t0, 3))


_TEACHERS: dict[tuple, TeacherResult] = {}


def teacher_policy(seed: int = 0, hidden=(32, 32)) -> TeacherResult:
    """``train_teacher`` once per (seed, hidden) in this process."""
    key = (seed, tuple(hidden))
    if key not in _TEACHERS:
        _TEACHERS[key] = train_teacher(seed, hidden)
    return _TEACHERS[key]


# ============================================================================ distillation

def load_demonstrations(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``states`` (N, 4) float and optional ``actions`` (N,) in {0, 1} from an .npz file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"demonstrations file {str(p)!r} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise UserError(f"{str(p)!r} is not a readable .npz file ({e})") from None
    return check_demonstrations(arrays.get("states"), arrays.get("actions"), str(p))


def check_demonstrations(states, actions=None, where: str = "demonstrations") -> tuple[np.ndarray, np.ndarray | None]:
    if states is None:
        raise UserError(f"{where}: needs an array 'states' of shape (N, {control.OBS_DIM})")
    s = np.asarray(states)
    if s.dtype.kind not in "fiu" or s.ndim != 2 or s.shape[1] != control.OBS_DIM or len(s) == 0:
        raise UserError(f"{where}: 'states' must be a non-empty numeric array of shape (N, {control.OBS_DIM}), "
                        f"got {s.dtype} {s.shape}")
    s = s.astype(np.float32)
    if not np.isfinite(s).all():
        raise UserError(f"{where}: 'states' holds NaN or infinite values")
    a = None
    if actions is not None:
        a = np.asarray(actions)
        if a.dtype.kind not in "iub" or a.shape != (len(s),):
            raise UserError(f"{where}: 'actions' must be an integer array of shape ({len(s)},), got {a.dtype} {a.shape}")
        if not np.isin(a, (0, 1)).all():
            raise UserError(f"{where}: 'actions' must be 0 or 1 (CartPole's two actions)")
        a = a.astype(np.int64)
    return s, a


@dataclass
class DistillResult:
    student: nn.Module
    plan: Plan
    teacher_return: float
    student_return: float
    random_return: float
    agreement: float                     # student's greedy action == teacher's, on held-out teacher states
    states: int                          # training states used (after DAgger)
    source: str                          # "teacher-rollouts" or the demonstrations file
    loss_curve: list[float] = field(default_factory=list)
    dagger_returns: list[float] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "teacher_return": self.teacher_return,
                "student_return": self.student_return, "random_return": self.random_return,
                "return_ratio": self.student_return / self.teacher_return if self.teacher_return else None,
                "agreement": self.agreement, "states": self.states, "source": self.source,
                "dagger_returns": self.dagger_returns, "settings": self.settings, "wall_s": self.wall_s,
                "final_loss": self.loss_curve[-1] if self.loss_curve else None}


def _as_plan(bits) -> Plan:
    if isinstance(bits, Plan):
        return bits
    if isinstance(bits, (tuple, list)) and len(bits) == 2:
        return Plan.uniform(int(bits[0]), int(bits[1]), name=f"W{bits[0]}A{bits[1]}")
    raise UserError(f"bits must be a Plan or a (w_bits, a_bits) pair, got {bits!r}")


def _fit(student, states, teacher_logits, actions, steps, lr, batch_size, temperature, gen, curve):
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    x = torch.from_numpy(states)
    t_logp = F.log_softmax(teacher_logits / temperature, dim=1) if teacher_logits is not None else None
    y = torch.from_numpy(actions) if actions is not None else None
    student.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        out = student(x[idx])
        if y is not None:
            loss = F.cross_entropy(out, y[idx])
        else:
            loss = temperature ** 2 * F.kl_div(F.log_softmax(out / temperature, dim=1), t_logp[idx],
                                               reduction="batchmean", log_target=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(round(float(loss.detach()), 6))
    student.eval()


def distill_policy(teacher: nn.Module, bits=(8, 8), states: np.ndarray | None = None,
                   actions: np.ndarray | None = None, episodes: int = 20, steps: int = 300,
                   dagger: int = 0, lr: float = 1e-3, batch_size: int = 256, temperature: float = 1.0,
                   eval_episodes: int = 100, seed: int = 0, source: str | None = None,
                   teacher_return: float | None = None) -> DistillResult:
    """Distil ``teacher`` into ``apply_plan(teacher, bits)`` and evaluate both by return.

    Training states come from ``episodes`` greedy teacher rollouts unless ``states`` are
    given; with ``actions`` the loss is cross-entropy to them, else the KL to the teacher's
    action distribution at ``temperature``. ``dagger`` rounds each roll the student out on
    ``episodes`` fresh episodes, add its states labelled by the teacher, and train ``steps``
    more steps. The evaluation uses ``eval_episodes`` seeded episodes shared by teacher,
    student and a random policy.
    """
    t0 = time.perf_counter()
    plan = _as_plan(bits)
    teacher = teacher.eval()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if states is None:
        ro = control.rollout(greedy(teacher), episodes, seed=20_000 + seed, record=True)
        states, src = ro.states, "teacher-rollouts"
        if actions is not None:
            raise UserError("actions were given without states")
    else:
        states, actions = check_demonstrations(states, actions)
        src = source or "demonstrations"

    def label(s):
        with torch.no_grad():
            return teacher(torch.from_numpy(s))

    applied = apply_plan(teacher, plan, (control.OBS_DIM,), seed=seed)
    student = applied.model
    calib = torch.from_numpy(states[torch.randperm(len(states), generator=gen)[:1024].numpy()])
    calibrate(student, [calib])
    curve: list[float] = []
    _fit(student, states, None if actions is not None else label(states), actions, steps, lr, batch_size,
         temperature, gen, curve)
    dagger_returns = []
    for k in range(dagger):
        ro = control.rollout(greedy(student), episodes, seed=30_000 + 97 * k + seed, record=True)
        dagger_returns.append(ro.mean_return)
        if actions is not None:  # demonstrations: label the student's states with the teacher's greedy actions
            actions = np.concatenate([actions, label(ro.states).argmax(1).numpy()])
        states = np.concatenate([states, ro.states])
        _fit(student, states, None if actions is not None else label(states), actions, steps, lr, batch_size,
             temperature, gen, curve)
    eval_seed = 10_000 + seed
    t_ret = teacher_return if teacher_return is not None else control.rollout(greedy(teacher), eval_episodes,
                                                                                 seed=eval_seed).mean_return
    s_ret = control.rollout(greedy(student), eval_episodes, seed=eval_seed).mean_return
    r_ret = control.rollout(control.random_policy(seed), eval_episodes, seed=eval_seed).mean_return
    held = control.rollout(greedy(teacher), 10, seed=40_000 + seed, record=True).states
    with torch.no_grad():
        x = torch.from_numpy(held)
        agree = float((teacher(x).argmax(1) == student(x).argmax(1)).float().mean())
    settings = {"episodes": episodes, "steps": steps, "dagger": dagger, "lr": lr, "batch_size": batch_size,
                "temperature": temperature, "eval_episodes": eval_episodes, "seed": seed}
    return DistillResult(student, plan, t_ret, s_ret, r_ret, agree, int(len(states)), src, curve, dagger_returns,
                         settings, round(time.perf_counter() - t0, 3))


def policy_distill(bits=(8, 8), seed: int = 0, demonstrations: str | Path | None = None, **kw) -> dict:
    """Train (or reuse) the seeded FP32 teacher, distil it at ``bits``; a JSON-ready summary."""
    tr = teacher_policy(seed)
    states = actions = None
    if demonstrations is not None:
        states, actions = load_demonstrations(demonstrations)
        kw["source"] = str(demonstrations)
    res = distill_policy(copy.deepcopy(tr.model), bits, states, actions, seed=seed,
                         teacher_return=tr.mean_return if kw.get("eval_episodes", 100) == 100 else None, **kw)
    out = res.to_dict()
    out["teacher"] = {"method": "cross-entropy method", "iterations": tr.iterations, "mean_return": tr.mean_return,
                      "wall_s": tr.wall_s, "hidden": [m.out_features for m in (tr.model.fc1, tr.model.fc2)]}
    return out
