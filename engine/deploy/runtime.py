"""The packed network executor: a fine-tuned planned network run with the bit-packed kernels only.

A ``PackedNetwork`` is a short list of ops (plain data) plus, for every quantized layer, its weights
packed as integer codes in the layout of the kernel the plan asks for, a per-output-channel scale
and the bias. Inference runs integer GEMMs and rescaling (``engine.kernels``) and does the
non-GEMM work (ReLU, pooling, batch norm in float, residual adds, flatten, LSTM gates) in numpy.
Torch-free by structure: this module and its siblings ``operands``, ``ops`` and ``packfile``
import numpy and ``engine.kernels`` only (a test checks that importing them loads no torch).

Kernel per layer (from the plan): bit-serial AND+popcount for k_w, k_a <= 2 with integer
activations; the int8-dot kernel for wider codes; the 2:4 compressed kernel for 2:4 layers;
float-activation bit-planes where activations stay float (a_bits 32); numpy float matmul for
layers whose weights stay float.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from engine.deploy.operands import FLOAT, DeployError, Gemm
from engine.deploy.ops import _OPS, _bn_fn, _getter, _im2col_nhwc_padded, _sigmoid

# ============================================================================ layers

KINDS = {"linear": frozenset({"w"}), "conv2d": frozenset({"w"}), "lstm": frozenset({"ih", "hh"})}
"""Layer kinds the executor runs, with the GEMM parts each holds (``Layer._<kind>`` runs it)."""


@dataclass
class Layer:
    """A deployed GEMM layer of one of ``KINDS``: 'linear', 'conv2d' or 'lstm' (gemms ih and hh)."""

    name: str
    kind: str
    gemms: dict[str, Gemm]
    bias: np.ndarray | None
    config: dict
    conv: dict = field(default_factory=dict)     # kernel_size, stride, padding, in_channels
    hidden: int = 0

    def __call__(self, x: np.ndarray):
        return getattr(self, "_" + self.kind)(x)

    def _linear(self, x):
        g = self.gemms["w"]
        if x.ndim < 2 or x.shape[-1] != g.k:
            raise DeployError(f"layer {self.name!r} expects (..., {g.k}) input, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, g.k)
        if x2.dtype != np.float32 or not x2.flags.c_contiguous:
            x2 = np.ascontiguousarray(x2, dtype=np.float32)
        y = g(x2)
        if self.bias is not None:
            np.add(y, self.bias, out=y)
        return y.reshape(*lead, g.n) if len(lead) != 1 else y

    def _conv2d(self, x):
        """im2col convolution on NHWC codes; returns an NCHW view of NHWC memory (the next
        convolution then reads channels-last without a transpose copy)."""
        g = self.gemms["w"]
        c = self.conv
        if x.ndim != 4 or x.shape[1] != c["in_channels"]:
            raise DeployError(f"layer {self.name!r} expects (B, {c['in_channels']}, H, W) input, "
                              f"got shape {tuple(x.shape)}")
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        b, ch, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = c["kernel_size"], c["stride"], c["padding"]
        xt = x.transpose(0, 2, 3, 1)                       # NHWC view (no copy)
        if g.act is None:
            dt = np.float32
        else:
            dt = g.act.dtype
        if ph or pw:
            xp = np.zeros((b, h + 2 * ph, w + 2 * pw, ch), dtype=dt)
            inner = xp[:, ph:ph + h, pw:pw + w, :]
            if g.act is None:
                inner[...] = xt
            else:
                g.quantize(xt, inner)                     # codes written straight into the padded buffer
        else:
            xp = np.ascontiguousarray(xt) if g.act is None else g.quantize(xt, np.empty((b, h, w, ch), dt))
        cols, ho, wo = _im2col_nhwc_padded(xp, kh, kw, sh, sw)
        y = g.matmul_codes(cols)
        if self.bias is not None:
            np.add(y, self.bias, out=y)
        return y.reshape(b, ho, wo, g.n).transpose(0, 3, 1, 2)

    def _lstm(self, x):
        gi, gh = self.gemms["ih"], self.gemms["hh"]
        if x.ndim != 3 or x.shape[2] != gi.k:
            raise DeployError(f"layer {self.name!r} expects (B, T, {gi.k}) input, got shape {tuple(x.shape)}")
        b, t, _ = x.shape
        hs = self.hidden
        xs = gi(np.ascontiguousarray(x.reshape(b * t, -1), dtype=np.float32))
        if self.bias is not None:
            np.add(xs, self.bias, out=xs)
        xs = xs.reshape(b, t, 4 * hs)
        h = np.zeros((b, hs), np.float32)
        c = np.zeros((b, hs), np.float32)
        outs = np.empty((b, t, hs), np.float32)
        mm, quant = gh.matmul_codes, gh.quantize
        h3 = 3 * hs
        for s in range(t):   # gate rows were reordered to (i, f, o, g) at deployment
            gates = mm(quant(h))
            gates += xs[:, s]
            sg = _sigmoid(gates[:, :h3])
            c = sg[:, hs:2 * hs] * c + sg[:, :hs] * np.tanh(gates[:, h3:])
            h = sg[:, 2 * hs:] * np.tanh(c)
            outs[:, s] = h
        return outs, (h[None], c[None])

    # ---- bookkeeping -----------------------------------------------------------------
    def summary(self) -> dict:
        gs = list(self.gemms.values())
        bias_b = int(self.bias.nbytes) if self.bias is not None else 0
        weights = sum(g.n * g.k for g in gs)
        packed = sum(g.packed_bytes for g in gs)
        meta = sum(g.meta_bytes for g in gs) + bias_b
        ideal = sum(math.ceil(g.n * g.k * min(g.w_bits, FLOAT) / 8) for g in gs)
        return {"name": self.name, "type": self.kind, "kernel": "+".join(sorted({g.kernel for g in gs})),
                "config": self.config, "weights": weights, "ideal_bytes": ideal,
                "bits_per_weight": round(8.0 * packed / weights, 3),
                "packed_bytes": packed, "meta_bytes": meta, "bytes": packed + meta,
                "fp32_bytes": 4 * weights + bias_b,
                "gemms": {k: g.describe() for k, g in self.gemms.items()}}


def ifog(hidden: int) -> np.ndarray:
    """Row order (i, f, o, g) from torch's (i, f, g, o): the three sigmoid gates side by side."""
    h = np.arange(hidden)
    return np.concatenate([h, h + hidden, h + 3 * hidden, h + 2 * hidden])


# ============================================================================ the network

@dataclass
class PackedNetwork:
    """Ops (plain data, topologically ordered) + deployed layers + batch-norm affines."""

    ops: list[dict]
    layers: dict[str, Layer]
    norms: dict[str, tuple[np.ndarray, np.ndarray]]
    input_shape: tuple[int, ...]
    meta: dict = field(default_factory=dict)

    def __call__(self, x, timings: dict | None = None) -> np.ndarray:
        return self.forward(x, timings)

    def forward(self, x, timings: dict | None = None, spans: dict | None = None) -> np.ndarray:
        """Logits (B, classes) float32 of a float (B, *input_shape) batch.

        ``timings`` (a dict) collects seconds per layer name spent in the layer call itself;
        ``spans`` (a dict) collects, per layer, the seconds from its start to the next layer's start:
        the layer plus the non-GEMM ops after it (ReLU, pooling, flatten, ...; ops before the first
        layer count with the first), so the spans add up to the whole forward pass."""
        t_start = time.perf_counter() if spans is not None else 0.0
        x = _input_array(x)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise DeployError(f"the packed network expects input of shape (B, {', '.join(map(str, self.input_shape))}), "
                              f"got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise DeployError("the input batch is empty")
        steps = self.__dict__.get("_steps")
        if steps is None or self.__dict__.get("_steps_key") != (id(self.ops), len(self.ops)):
            steps = self.__dict__["_steps"] = self._compile()
            self.__dict__["_steps_key"] = (id(self.ops), len(self.ops))
        env: dict[str, object] = {}
        out = None
        cur, t_mark = None, t_start
        perf = time.perf_counter
        for kind, name, fn, getters, kwargs in steps:
            if kind == 0:      # input
                env[name] = x
                continue
            args = [g(env) for g in getters]
            if kind == 1:      # output
                out = args[0]
                break
            if kind == 2:      # layer
                if spans is not None:
                    now = perf()
                    if cur is not None:
                        spans[cur] = spans.get(cur, 0.0) + now - t_mark
                        t_mark = now
                    cur = fn.name
                if timings is not None:
                    t0 = perf()
                    env[name] = fn(args[0])
                    timings[fn.name] = timings.get(fn.name, 0.0) + perf() - t0
                else:
                    env[name] = fn(args[0])
                continue
            env[name] = fn(*args, **kwargs)
        if spans is not None and cur is not None:
            spans[cur] = spans.get(cur, 0.0) + perf() - t_mark
        if not isinstance(out, np.ndarray):
            raise DeployError("the packed network's output is not an array")
        return out if out.flags.c_contiguous else np.ascontiguousarray(out)

    def _compile(self) -> list:
        """The op list as (kind, name, callable, argument getters, kwargs): constants resolved once."""
        steps = []
        for op in self.ops:
            kind = op["op"]
            getters = [_getter(a) for a in op.get("args", [])]
            if kind == "input":
                steps.append((0, op["name"], None, getters, {}))
            elif kind == "output":
                steps.append((1, op["name"], None, getters, {}))
            elif kind == "layer":
                steps.append((2, op["name"], self.layers[op["layer"]], getters, {}))
            elif kind == "batchnorm":
                scale, shift = self.norms[op["norm"]]
                steps.append((3, op["name"], _bn_fn(scale, shift), getters, {}))
            else:
                steps.append((3, op["name"], _OPS[kind], getters, op.get("kwargs", {})))
        return steps

    def predict(self, x, batch_size: int = 512) -> np.ndarray:
        x = _input_array(x)
        return np.concatenate([self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    def summary(self) -> dict:
        rows = [layer.summary() for layer in self.layers.values()]
        packed = sum(r["bytes"] for r in rows)
        fp32 = sum(r["fp32_bytes"] for r in rows)
        norm_b = sum(a.nbytes + b.nbytes for a, b in self.norms.values())
        return {"layers": rows, "total_packed_bytes": packed + norm_b,
                "ideal_weight_bytes": sum(r["ideal_bytes"] for r in rows), "packed_weight_bytes": sum(r["packed_bytes"] for r in rows),
                "meta_bytes": sum(r["meta_bytes"] for r in rows) + norm_b, "fp32_bytes": fp32 + norm_b,
                "compression": round((fp32 + norm_b) / max(packed + norm_b, 1), 3)}


def _input_array(x) -> np.ndarray:
    if not isinstance(x, np.ndarray) and type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        x = x.detach().cpu().numpy()   # a torch tensor, converted without importing torch here
    if not isinstance(x, np.ndarray):
        raise DeployError(f"the packed network needs a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype.kind not in "fiu":
        raise DeployError(f"the packed network needs numeric input, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


# ---- non-GEMM ops (numpy) ----------------------------------------------------------------
