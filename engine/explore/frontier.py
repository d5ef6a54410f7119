"""The accuracy-throughput frontier: Pareto sets, hypervolume and the knee point.

Objectives are accuracy (maximise) and throughput (maximise), optionally a third (size or
energy, minimised). Points carry a status -- 'estimated', 'fine-tuned' or 'failed'; failed points
never enter a frontier, and ``only_finetuned=True`` draws it from fine-tuned points alone.
Works on pandas DataFrames and on plain lists of dicts; numeric cores take arrays.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

STATUSES = ("estimated", "fine-tuned", "failed")
_MAXIMISE_BY_NAME = {"accuracy": True, "throughput": True, "size_bytes": False, "energy_j": False,
                     "latency_s": False, "bops": False, "val_accuracy": True, "test_accuracy": True}


def normalise_status(s) -> str:
    """'fine_tuned' / 'finetuned' / 'Fine-Tuned' -> 'fine-tuned'; unknown values pass through lowered."""
    t = str(s).strip().lower().replace("_", "-").replace(" ", "-")
    return "fine-tuned" if t in ("finetuned", "fine-tuned", "tuned") else t


def _to_min(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"objective values must be a 2-D array (points x objectives), got shape {v.shape}")
    if len(maximize) != v.shape[1]:
        raise ValueError(f"{len(maximize)} directions for {v.shape[1]} objectives")
    return np.where(np.asarray(maximize, dtype=bool), -v, v)


def pareto_mask(values, maximize: Sequence[bool]) -> np.ndarray:
    """True for points no other point dominates (identical points are all kept).

    2 objectives: O(n log n) sweep; more: pairwise in chunks.
    """
    f = _to_min(values, maximize)
    n, d = f.shape
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    ok = np.all(np.isfinite(f), axis=1)
    idx = np.flatnonzero(ok)
    if d == 2:
        order = idx[np.lexsort((f[idx, 1], f[idx, 0]))]
        best = np.inf
        last = None
        for i in order:
            y = f[i, 1]
            if y < best or (y == best and last is not None and np.array_equal(f[i], f[last]) and keep[last]):
                keep[i] = True
            best = min(best, y)
            last = i
        return keep
    g = f[idx]
    dominated = np.zeros(len(idx), dtype=bool)
    for s in range(0, len(idx), 512):
        blk = g[s:s + 512]
        le = np.all(g[None, :, :] <= blk[:, None, :], axis=2)
        lt = np.any(g[None, :, :] < blk[:, None, :], axis=2)
        dominated[s:s + 512] = np.any(le & lt, axis=1)
    keep[idx[~dominated]] = True
    return keep


def _frame(points) -> pd.DataFrame:
    if isinstance(points, pd.DataFrame):
        return points
    return pd.DataFrame(list(points))


def _directions(cols: Sequence[str], maximize) -> list[bool]:
    if maximize is not None:
        return list(maximize)
    out = []
    for c in cols:
        if c not in _MAXIMISE_BY_NAME:
            raise ValueError(f"say whether to maximise {c!r}: pass maximize=(...)")
        out.append(_MAXIMISE_BY_NAME[c])
    return out


def eligible(points, objectives: Sequence[str], status_col: str = "status", only_finetuned: bool = False):
    """Rows that may enter a frontier: not failed, all objectives finite (and fine-tuned if asked)."""
    df = _frame(points)
    missing = [c for c in objectives if c not in df.columns]
    if missing:
        raise ValueError(f"points have no column {missing[0]!r}; columns are {', '.join(map(str, df.columns))}")
    mask = np.all(np.isfinite(df[list(objectives)].to_numpy(dtype=float)), axis=1)
    if status_col in df.columns:
        st = df[status_col].map(normalise_status)
        mask &= (st != "failed").to_numpy()
        if only_finetuned:
            mask &= (st == "fine-tuned").to_numpy()
    elif only_finetuned:
        raise ValueError(f"only_finetuned needs a {status_col!r} column")
    return df[mask]


def pareto(points, x: str = "throughput", y: str = "accuracy", z: str | None = None, maximize=None,
           status_col: str = "status", only_finetuned: bool = False) -> pd.DataFrame:
    """Frontier rows of ``points`` (DataFrame or list of dicts), sorted by ``x`` ascending.

    Default directions: accuracy and throughput maximised; size_bytes, energy_j, latency_s minimised.
    The original index is kept so a row maps back to its point.
    """
    cols = [x, y] + ([z] if z else [])
    df = eligible(points, cols, status_col, only_finetuned)
    dirs = _directions(cols, maximize)
    mask = pareto_mask(df[cols].to_numpy(dtype=float), dirs)
    return df[mask].sort_values([x, y], kind="mergesort")


def hypervolume(points, ref: Sequence[float], maximize: Sequence[bool] | None = None,
                columns: Sequence[str] | None = None) -> float:
    """Volume dominated by ``points`` and bounded by the reference point ``ref`` (exact; 2 or 3
    objectives; 3-D by slicing along the third). Points not strictly better than ``ref`` in every
    objective contribute nothing. ``points``: array (n x d), or a DataFrame with ``columns``."""
    if isinstance(points, (pd.DataFrame, list)) and columns is not None:
        df = _frame(points)
        vals = df[list(columns)].to_numpy(dtype=float)
        maximize = _directions(columns, maximize)
    else:
        vals = np.asarray(points, dtype=float).reshape(-1, len(ref))
        maximize = list(maximize) if maximize is not None else [True] * len(ref)
    f = _to_min(vals, maximize)
    r = _to_min(np.asarray(ref, dtype=float)[None, :], maximize)[0]
    f = f[np.all(np.isfinite(f), axis=1) & np.all(f < r, axis=1)]
    if len(f) == 0:
        return 0.0
    if f.shape[1] == 2:
        return _hv2(f, r)
    if f.shape[1] == 3:
        order = np.argsort(f[:, 2], kind="mergesort")
        f = f[order]
        total = 0.0
        for i in range(len(f)):
            top = f[i + 1, 2] if i + 1 < len(f) else r[2]
            if top > f[i, 2]:
                total += _hv2(f[:i + 1, :2], r[:2]) * (top - f[i, 2])
        return float(total)
    raise ValueError("hypervolume supports 2 or 3 objectives")


def _hv2(f: np.ndarray, r: np.ndarray) -> float:
    """2-D hypervolume for minimisation: sweep in x, add the strip each new best y opens."""
    order = np.lexsort((f[:, 1], f[:, 0]))
    total, prev_y = 0.0, r[1]
    for i in order:
        if f[i, 1] < prev_y:
            total += (r[0] - f[i, 0]) * (prev_y - f[i, 1])
            prev_y = f[i, 1]
    return float(total)


def knee(front, x: str = "throughput", y: str = "accuracy", z: str | None = None, maximize=None):
    """Index label of the knee of a frontier (DataFrame from ``pareto``): after scaling each objective
    to [0, 1], the point farthest from the line through the two extremes (2-D), or nearest to the
    ideal point (3-D, or fronts of two points). None for an empty front."""
    df = _frame(front)
    if len(df) == 0:
        return None
    cols = [x, y] + ([z] if z else [])
    dirs = _directions(cols, maximize)
    g = -_to_min(df[cols].to_numpy(dtype=float), dirs)          # larger is better in every column
    lo, hi = g.min(axis=0), g.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    u = (g - lo) / span
    if len(df) <= 2 or z is not None:
        return df.index[int(np.argmin(np.linalg.norm(1.0 - u, axis=1)))]
    a = u[np.argmax(u[:, 0])]            # best in x
    b = u[np.argmax(u[:, 1])]            # best in y
    ab = b - a
    norm = np.hypot(*ab)
    if norm == 0:
        return df.index[0]
    # signed distance towards the ideal corner (1, 1)
    dist = (ab[0] * (u[:, 1] - a[1]) - ab[1] * (u[:, 0] - a[0])) / norm
    side = np.sign(ab[0] * (1 - a[1]) - ab[1] * (1 - a[0])) or 1.0
    return df.index[int(np.argmax(dist * side))]


def frontier(points, x: str = "throughput", y: str = "accuracy", z: str | None = None, maximize=None,
             ref: Sequence[float] | None = None, status_col: str = "status", only_finetuned: bool = False) -> dict:
    """Frontier, its knee and (given ``ref``) its hypervolume, in one call for the dashboard."""
    front = pareto(points, x, y, z, maximize, status_col, only_finetuned)
    cols = [x, y] + ([z] if z else [])
    out = {"front": front, "knee": knee(front, x, y, z, maximize)}
    if ref is not None:
        out["hypervolume"] = hypervolume(front, ref, maximize, columns=cols)
    return out
