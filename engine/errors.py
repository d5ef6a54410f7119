"""The error users see: a clear message, exit code 2 on the command line, no traceback."""
from __future__ import annotations

from engine.plans.plan import PlanError


class UserError(ValueError):
    """Bad input from the user (file, option, dataset, model); the message says what to do."""


USER_ERRORS = (UserError, PlanError)
