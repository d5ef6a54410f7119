"""Small file helpers shared by plans, checkpoints, sessions and exports."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it in place."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ---- the one JSON reader of files and uploads ------------------------------------------------
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a file may have; bitscape's own files stay under 10."""
MAX_INT_DIGITS = 40
"""Longest integer literal accepted; Python refuses over 4300 digits with a bare ValueError."""
NAME_LIMIT = 80


def clip(value, limit: int = NAME_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages that echo user text."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit - 12]}...({len(r)} chars)"


def load_json(text: str | bytes, what: str, error: type[Exception] | None = None, constants: bool = False,
              max_depth: int = MAX_JSON_DEPTH):
    """Parse JSON from a file or upload; any defect is one ``error`` (default UserError) naming ``what``.

    Refused at parse time: nesting deeper than ``max_depth``, integers longer than
    MAX_INT_DIGITS, NaN/Infinity unless ``constants``, invalid UTF-8 and invalid JSON.
    """
    if error is None:
        from engine.errors import UserError as error
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{what} is not UTF-8 text") from None

    def parse_int(s: str) -> int:
        if len(s.lstrip("-")) > MAX_INT_DIGITS:
            raise _Refused(f"holds an integer of {len(s.lstrip('-'))} digits (more than {MAX_INT_DIGITS})")
        return int(s)

    def parse_constant(name: str):
        if not constants:
            raise _Refused(f"holds {name}, which is not valid JSON")
        return float(name)

    try:
        data = json.loads(text, parse_int=parse_int, parse_constant=parse_constant)
    except _Refused as e:
        raise error(f"{what} {e}") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply (more than {max_depth} levels)") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except (ValueError, TypeError) as e:
        raise error(f"{what} is not valid JSON: {clip(str(e))}") from None
    if json_depth(data) > max_depth:
        raise error(f"{what} is nested too deeply (more than {max_depth} levels)")
    return data


class _Refused(ValueError):
    pass


def json_depth(obj) -> int:
    """Nesting depth of parsed JSON, walked without recursion (1 for a scalar or a flat list)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest
