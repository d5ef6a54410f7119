"""Fine-tune budgets (steps, epochs, patience) and the validation-best state a fine-tune returns.

A fine-tune stops at whichever comes first: ``Settings.steps`` (the cap), ``Settings.epochs`` of
the training split, or ``Settings.patience`` validations in a row without a better score. It ends
on the best state it validated, the start (the calibrated estimate) included, so it never
returns a network worse on validation than the one it was given.
"""
from __future__ import annotations

import math
from typing import Callable

import torch.nn as nn

from engine.errors import UserError
from engine.evaluation import MAX_STEPS, Settings
from engine.fileio import clip


def epoch_steps(s: Settings, n_train: int) -> int:
    """Optimiser steps in one pass over ``n_train`` examples (at least 1)."""
    return max(1, math.ceil(n_train / s.batch_size))


def budget_steps(s: Settings, n_train: int) -> int:
    """The step budget: ``s.steps``, or fewer when ``s.epochs`` of ``n_train`` examples come first."""
    if s.epochs is None:
        return s.steps
    by_epochs = max(1, math.ceil(s.epochs * n_train / s.batch_size))
    if by_epochs > MAX_STEPS:
        raise UserError(f"epochs={clip(s.epochs)} is {by_epochs:,} steps; at most {MAX_STEPS:,} are allowed")
    return min(s.steps, by_epochs)


def val_interval(s: Settings, budget: int, n_train: int) -> int:
    """Steps between validations: ``s.val_every``, else a twentieth of the budget or half an
    epoch, whichever is shorter (so a patience budget with a large cap still checks each epoch)."""
    if s.val_every is not None:
        return s.val_every
    return max(1, min(budget // 20, epoch_steps(s, n_train) // 2))


class BestState:
    """Validates a network at the start and then when asked, keeping a copy of the best weights.

    A later state with an equal score replaces the kept one (it has trained longer); only a
    strictly better score resets the patience count.
    """

    def __init__(self, model: nn.Module, validate: Callable[[], float], patience: int | None = None):
        self.model, self.validate, self.patience = model, validate, patience
        self.start = self.best = float(validate())
        self.best_step, self.stale = 0, 0
        self.checks: list[tuple[int, float]] = [(0, self.start)]
        self.state = _copy_state(model)

    def check(self, step: int) -> bool:
        """Validate after ``step`` steps; True when patience has run out."""
        v = float(self.validate())
        self.checks.append((step, round(v, 6)))
        if v > self.best:
            self.stale = 0
        else:
            self.stale += 1
        if v >= self.best:
            self.best, self.best_step, self.state = v, step, _copy_state(self.model)
        return self.patience is not None and self.stale >= self.patience

    def restore(self) -> None:
        """Load the kept weights back into the network."""
        self.model.load_state_dict(self.state)


def _copy_state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
