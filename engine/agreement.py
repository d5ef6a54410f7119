"""One record of how closely a deployed candidate (packed network, ONNX model) follows the reference
(the fake-quantized torch model): ``bitscape deploy --verify`` and ``bitscape export onnx --verify``
both report it, under the same keys. numpy only."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """Top-1 agreement and logit differences of a candidate against the reference on ``examples`` inputs."""

    examples: int
    disagreements: int                       # inputs whose top-1 class differs
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    max_rel_logit_diff: float                # max |diff| / max |reference logit|
    reference_accuracy: float | None = None  # with labels
    candidate_accuracy: float | None = None

    @property
    def agreement(self) -> float:
        """The fraction of inputs with the same top-1 class (0 on no inputs)."""
        return (self.examples - self.disagreements) / self.examples if self.examples else 0.0

    @property
    def same_argmax(self) -> int:
        return self.examples - self.disagreements

    @classmethod
    def of(cls, reference, candidate, labels=None) -> Agreement:
        """Compare two (N, classes) logit arrays; ``labels`` (N,) adds both accuracies."""
        ref = np.asarray(reference, dtype=np.float64)
        got = np.asarray(candidate, dtype=np.float64)
        if ref.shape != got.shape:
            raise ValueError(f"reference logits {ref.shape} and candidate logits {got.shape} differ in shape")
        n = int(len(ref))
        diff = np.abs(ref - got)
        ra, ca = (ref.argmax(1), got.argmax(1)) if n else (np.zeros(0, int), np.zeros(0, int))
        acc = {}
        if labels is not None:
            y = np.asarray(labels)
            acc = {"reference_accuracy": float((ra == y).mean()) if n else 0.0,
                   "candidate_accuracy": float((ca == y).mean()) if n else 0.0}
        big = float(np.abs(ref).max()) if diff.size else 0.0
        return cls(n, int((ra != ca).sum()),
                   float(diff.max()) if diff.size else 0.0, float(diff.mean()) if diff.size else 0.0,
                   float(diff.max()) / max(big, 1e-12) if diff.size else 0.0, **acc)

    def to_dict(self) -> dict:
        """The JSON face: the fields plus ``agreement`` (the same-top-1 fraction); accuracies only with labels."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["agreement"] = self.agreement
        return d
