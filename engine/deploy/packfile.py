"""The packed network's file: one safetensors file (packed arrays, JSON metadata with the ops and
the plan; no pickle). ``load_packed`` checks every array before any kernel runs. numpy only."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from engine import kernels as K
from engine.deploy.operands import KERNELS, ActSpec, DeployError, Gemm
from engine.deploy.ops import _OPS, _refs
from engine.deploy.runtime import KINDS, Layer, PackedNetwork

PACKED_KIND = "packed-network"
PACKED_VERSION = 1
META_KEY = "bitscape"


# ============================================================================ files

def save_packed(net: PackedNetwork, path) -> dict:
    """Write one safetensors file (packed arrays + JSON metadata) atomically; returns the summary."""
    from safetensors.numpy import save

    from engine.fileio import atomic_write_bytes
    tensors: dict[str, np.ndarray] = {}
    layers_meta = []
    for lname, layer in net.layers.items():
        lm = {"name": lname, "kind": layer.kind, "config": layer.config, "conv": layer.conv,
              "hidden": layer.hidden, "bias": layer.bias is not None, "gemms": {}}
        for part, g in layer.gemms.items():
            lm["gemms"][part] = g.meta()
            tensors.update(g.arrays(f"layers.{lname}.{part}"))
        if layer.bias is not None:
            tensors[f"layers.{lname}.bias"] = layer.bias
        layers_meta.append(lm)
    for nname, (scale, shift) in net.norms.items():
        tensors[f"norms.{nname}.scale"] = scale
        tensors[f"norms.{nname}.shift"] = shift
    summary = net.summary()
    meta = {"kind": PACKED_KIND, "version": PACKED_VERSION, "input_shape": list(net.input_shape),
            "ops": net.ops, "layers": layers_meta, "norms": list(net.norms),
            "info": {k: v for k, v in net.meta.items()}, "summary": summary}
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))
    return summary


def _expect(arrs: dict, key: str, dtype, shape, where: str) -> np.ndarray:
    if key not in arrs:
        raise DeployError(f"{where}: array {key!r} is missing")
    a = arrs[key]
    if a.dtype != np.dtype(dtype) or tuple(a.shape) != tuple(shape):
        raise DeployError(f"{where}: array {key!r} is {a.dtype}{tuple(a.shape)}, expected "
                          f"{np.dtype(dtype)}{tuple(shape)}")
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _load_gemm(arrs: dict, prefix: str, gm: dict, where: str) -> Gemm:
    try:
        kernel, n, k = gm["kernel"], int(gm["n"]), int(gm["k"])
        if kernel not in KERNELS or n < 1 or k < 1:
            raise ValueError(f"kernel {kernel!r}, shape ({n}, {k})")
        act = ActSpec.from_dict(gm["act"]) if gm.get("act") else None
        if act is not None:
            if act.method not in ("lsq", "wrpn") or not 1 <= act.bits <= 8 or act.p not in (1, 2) \
                    or not (math.isfinite(act.step) and act.step > 0) or act.n < 1:
                raise ValueError("bad activation quantizer")
        if kernel == "float":
            wf = _expect(arrs, f"{prefix}.float", np.float32, (n, k), where)
            return Gemm(gm["name"], kernel, n, k, act, w_float=wf, note=gm.get("note", ""))
        if (act is None) != (kernel == "float-act"):
            raise ValueError("activation quantizer does not match the kernel")
        layout, bits, signed = gm["layout"], int(gm["bits"]), bool(gm["signed"])
        if not 1 <= bits <= 8 or layout != {"bitserial": "planes", "int8": "int8", "nm": "nm",
                                             "float-act": "float"}[kernel]:
            raise ValueError(f"layout {layout!r} with {bits} bits")
        w_p, w_q = int(gm.get("w_p", 1)), int(gm.get("w_q", 0))
        if (w_p, w_q) not in ((1, 0), (2, -1)):
            raise ValueError("bad weight code map")
    except (KeyError, TypeError, ValueError) as e:
        raise DeployError(f"{where}: invalid layer metadata ({e})") from None
    kb64 = (k + 63) // 64
    if layout == "planes":
        arrays = {"planes": _expect(arrs, f"{prefix}.planes", np.uint64, (n, bits, (k + 255) // 256 * 4), where)}
    elif layout == "int8":
        nd = 1 if bits <= 4 else 2
        arrays = {"digits": _expect(arrs, f"{prefix}.digits", np.uint8, (n, nd, kb64 * 32), where),
                  "usum": _expect(arrs, f"{prefix}.usum", np.int64, (n,), where)}
    elif layout == "nm":
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        nv = 1 if max(-lo, hi) <= 64 else 2
        arrays = {"values": _expect(arrs, f"{prefix}.values", np.int8, (n, nv, kb64 * 32), where),
                  "positions": _expect(arrs, f"{prefix}.positions", np.uint8, (n, kb64 * 32), where),
                  "wsum": _expect(arrs, f"{prefix}.wsum", np.int64, (n,), where)}
        if int(arrays["positions"].max(initial=0)) > 3:
            raise DeployError(f"{where}: 2:4 positions out of range (corrupt file)")
    else:
        arrays = {"lanes": _expect(arrs, f"{prefix}.lanes", np.uint32, ((n + 7) // 8, (k + 29) // 30, bits, 8),
                                   where)}
    sums = _expect(arrs, f"{prefix}.row_sums", np.int64, (n,), where)
    scale = _expect(arrs, f"{prefix}.scale", np.float32, (n,), where)
    if not np.all(np.isfinite(scale)):
        raise DeployError(f"{where}: non-finite weight scales (corrupt file)")
    pw = K.PackedWeights(layout, bits, signed, (n, k), arrays, sums)
    return Gemm(gm["name"], kernel, n, k, act, packed=pw, w_scale=scale, w_p=w_p, w_q=w_q,
                w_bits=int(gm.get("w_bits", bits)), note=gm.get("note", ""))


def load_packed(path) -> PackedNetwork:
    """Read a file written by ``save_packed``; a missing, corrupt or foreign file is a DeployError."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load
    p = Path(path)
    if not p.is_file():
        raise DeployError(f"packed network {str(p)!r} does not exist")
    try:
        arrs = load(p.read_bytes())
        with safe_open(str(p), framework="numpy") as f:
            md = f.metadata() or {}
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as e:
        raise DeployError(f"packed network {str(p)!r} is not a valid safetensors file: {e}") from None
    from engine.fileio import load_json  # nesting and integer-size limits, like every file bitscape reads
    meta = load_json(md.get(META_KEY, "{}"), f"packed network {str(p)!r}: its metadata", error=DeployError)
    if not isinstance(meta, dict) or meta.get("kind") != PACKED_KIND:
        raise DeployError(f"{str(p)!r} is not a packed network written by `bitscape deploy`")
    if meta.get("version") != PACKED_VERSION:
        raise DeployError(f"packed network {str(p)!r} has version {meta.get('version')!r}; "
                          f"this bitscape reads version {PACKED_VERSION}")
    where0 = f"packed network {str(p)!r}"
    try:
        input_shape = tuple(int(d) for d in meta["input_shape"])
        ops = list(meta["ops"])
        layers = {}
        for lm in meta["layers"]:
            name = lm["name"]
            where = f"{where0}, layer {name!r}"
            gemms = {part: _load_gemm(arrs, f"layers.{name}.{part}", gm, where) for part, gm in lm["gemms"].items()}
            kind = lm["kind"]
            need = KINDS.get(kind)
            if need is None or set(gemms) != need:
                raise DeployError(f"{where}: invalid layer kind {kind!r} / parts {sorted(gemms)}")
            nb = 4 * int(lm["hidden"]) if kind == "lstm" else gemms["w"].n
            bias = _expect(arrs, f"layers.{name}.bias", np.float32, (nb,), where) if lm["bias"] else None
            if kind == "lstm" and (gemms["ih"].n != nb or gemms["hh"].n != nb or gemms["hh"].k != nb // 4):
                raise DeployError(f"{where}: LSTM weight shapes do not match hidden size {lm['hidden']}")
            conv = lm.get("conv") or {}
            if kind == "conv2d":
                conv = {"kernel_size": [int(v) for v in conv["kernel_size"]], "stride": [int(v) for v in conv["stride"]],
                        "padding": [int(v) for v in conv["padding"]], "in_channels": int(conv["in_channels"])}
                kh, kw = conv["kernel_size"]
                if kh * kw * conv["in_channels"] != gemms["w"].k or min(conv["stride"]) < 1 or min(conv["padding"]) < 0:
                    raise DeployError(f"{where}: convolution geometry does not match its weights")
            layers[name] = Layer(name, kind, gemms, bias, lm.get("config", {}), conv, int(lm.get("hidden", 0)))
        norms = {}
        for nname in meta.get("norms", []):
            sc = np.asarray(arrs.get(f"norms.{nname}.scale"))
            sh = np.asarray(arrs.get(f"norms.{nname}.shift"))
            if sc.dtype != np.float32 or sh.dtype != np.float32 or sc.ndim != 1 or sc.shape != sh.shape:
                raise DeployError(f"{where0}: batch norm {nname!r} arrays are missing or malformed")
            norms[nname] = (sc, sh)
        defined = set()
        for op in ops:
            kind = op["op"]
            if kind not in _OPS and kind not in ("input", "output", "layer", "batchnorm"):
                raise DeployError(f"{where0}: unknown op {kind!r}")
            if kind == "layer" and op["layer"] not in layers:
                raise DeployError(f"{where0}: op refers to unknown layer {op['layer']!r}")
            if kind == "batchnorm" and op["norm"] not in norms:
                raise DeployError(f"{where0}: op refers to unknown batch norm {op['norm']!r}")
            for ref in _refs(op.get("args", [])):
                if ref not in defined:
                    raise DeployError(f"{where0}: op {op.get('name')!r} uses {ref!r} before it is defined")
            defined.add(op["name"])
        if not ops or ops[-1]["op"] != "output":
            raise DeployError(f"{where0}: the op list has no output")
    except DeployError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DeployError(f"{where0}: invalid metadata ({type(e).__name__}: {e})") from None
    return PackedNetwork(ops, layers, norms, input_shape, meta.get("info", {}))
