"""The ``torch-cuda`` target of ``bitscape measure``: a plan's network run the way torch runs it on a GPU.

Each planned Conv2d / Linear layer is swapped for a module that runs what a GPU offers for its config:
- 2:4 sparsity -> the float weight as a semi-structured sparse tensor (``torch.sparse.to_sparse_semi_structured``);
- weights and activations of 8 bits or fewer -> int8 x int8 -> int32 GEMM (``torch._int_mm``): weights as
  per-output-channel int8 codes of the plan's quantized weights, activations with a per-tensor scale taken
  at run time (GPUs have no narrower integer GEMM in torch, so W1..W8 all run as int8);
- anything else (float operands, grouped convolutions) -> the float dtype (fp16 or bf16) with cuDNN / cuBLAS.
The rest of the network (batch norm, pooling, ReLU) runs in the float dtype. Convolutions on the int8 and
2:4 paths are lowered to unfold + GEMM. Layer times come from CUDA events around each swapped layer; the
whole network is timed around a synchronised call. The modules also run on CPU (int8 and float paths) so
their arithmetic is tested where no GPU is present.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
PATHS = ("int8", "2:4", "float")


def no_gpu_reason() -> str | None:
    """None where torch sees a CUDA GPU; otherwise the one-line reason the target is skipped."""
    try:
        if torch.cuda.is_available():
            return None
    except Exception as e:      # a broken driver reads as no GPU
        return f"no GPU (torch.cuda failed: {e})"
    return "no GPU (torch.cuda.is_available() is False)"


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def layer_path(cfg, groups: int = 1) -> str:
    """Which GPU path a layer with LayerConfig ``cfg`` runs on (see the module docstring)."""
    if cfg is None:
        return "float"
    if cfg.sparsity == "2:4" and groups == 1:
        return "2:4"
    if int(cfg.w_bits) <= 8 and int(cfg.a_bits) <= 8 and groups == 1:
        return "int8"
    return "float"


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class GemmOp(nn.Module):
    """y = x @ W^T + b for 2-D x on one GPU path; W is (out, in) float (already masked and quantized)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, path: str, dtype: torch.dtype,
                 device: torch.device):
        super().__init__()
        self.path, self.dtype = path, dtype
        self.n, self.k = weight.shape
        cuda = device.type == "cuda"
        w = weight.detach().float().to(device)
        self.bias = None if bias is None else bias.detach().to(device, dtype)
        if path == "int8":
            # torch._int_mm on CUDA wants m > 16 and k, n multiples of 8 (16 here, to be safe across
            # versions): pad k and n here, m at run time
            self.kp, self.np_ = (_round_up(self.k, 16), _round_up(self.n, 16)) if cuda else (self.k, self.n)
            s = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            codes = torch.zeros(self.np_, self.kp, dtype=torch.int8, device=device)
            codes[: self.n, : self.k] = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
            self.w_t = codes.t().contiguous()           # (kp, np)
            self.w_scale = s.to(torch.float32)
            self.min_m = 17 if cuda else 1
        elif path == "2:4":
            from torch.sparse import to_sparse_semi_structured
            # the semi-structured layouts want both dimensions in multiples of 64
            self.kp, self.np_ = _round_up(self.k, 64), _round_up(self.n, 64)
            wp = torch.zeros(self.np_, self.kp, dtype=dtype, device=device)
            wp[: self.n, : self.k] = w.to(dtype)
            self.w_sparse = to_sparse_semi_structured(wp)
        elif path == "float":
            self.w = w.to(dtype)
        else:
            raise ValueError(f"unknown GPU path {path!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.path == "float":
            return F.linear(x.to(self.dtype), self.w, self.bias)
        m = x.shape[0]
        if self.path == "2:4":
            mp = _round_up(max(m, 1), 64)       # the dense operand in whole 64-row tiles
            xp = F.pad(x.to(self.dtype), (0, self.kp - self.k, 0, mp - m))
            y = F.linear(xp, self.w_sparse)[:m, : self.n]
            return y + self.bias if self.bias is not None else y
        sx = x.detach().abs().amax().float().clamp_min(1e-12) / 127.0
        q = torch.round(x.float() / sx).clamp(-127, 127).to(torch.int8)
        mp = max(m, self.min_m)
        if mp != m or self.kp != self.k:
            q = F.pad(q, (0, self.kp - self.k, 0, mp - m))
        acc = torch._int_mm(q, self.w_t)[:m, : self.n]
        y = (acc.float() * (sx * self.w_scale)).to(self.dtype)
        return y + self.bias if self.bias is not None else y


class GpuLinear(nn.Module):
    def __init__(self, mod: nn.Linear, weight: torch.Tensor, path: str, dtype, device):
        super().__init__()
        self.gemm = GemmOp(weight, mod.bias, path, dtype, device)

    def forward(self, x):
        lead = x.shape[:-1]
        return self.gemm(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)


class GpuConv2d(nn.Module):
    """A convolution: cuDNN in the float dtype, or unfold + one GEMM on the int8 / 2:4 paths."""

    def __init__(self, mod: nn.Conv2d, weight: torch.Tensor, path: str, dtype, device):
        super().__init__()
        self.path, self.dtype = path, dtype
        self.kernel_size, self.stride, self.padding = mod.kernel_size, mod.stride, mod.padding
        self.dilation, self.groups, self.out_channels = mod.dilation, mod.groups, mod.out_channels
        if path == "float":
            self.w = weight.detach().to(device, dtype)
            self.bias = None if mod.bias is None else mod.bias.detach().to(device, dtype)
        else:
            self.gemm = GemmOp(weight.reshape(weight.shape[0], -1), mod.bias, path, dtype, device)

    def forward(self, x):
        if self.path == "float":
            return F.conv2d(x.to(self.dtype), self.w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)     # (N, K, L)
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        y = self.gemm(cols.transpose(1, 2).reshape(n * ho * wo, -1))                     # (N*L, out)
        return y.reshape(n, ho * wo, self.out_channels).transpose(1, 2).reshape(n, self.out_channels, ho, wo)


def gpu_network(applied, dtype: str = "fp16", device: str | torch.device = "cuda") -> tuple[nn.Module, dict]:
    """The applied plan's network with every planned Conv2d / Linear on its GPU path; the rest in ``dtype``.

    Returns (module in eval mode on ``device``, {layer name: path})."""
    from engine.plans.layers import QuantConv2d, QuantLinear
    if dtype not in DTYPES:
        raise ValueError(f"float dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    dt, dev = DTYPES[dtype], torch.device(device)
    src = applied.model
    net = copy.deepcopy(src).eval()
    paths: dict = {}
    swaps = []
    for name, mod in src.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            cfg = applied.configs.get(name)
            with torch.no_grad():
                w = mod.quant_weight() if isinstance(mod, (QuantConv2d, QuantLinear)) else mod.weight
            groups = getattr(mod, "groups", 1)
            path = layer_path(cfg, groups)
            if path == "2:4" and dev.type != "cuda":
                path = "float"     # semi-structured sparse tensors run on CUDA only
            new = (GpuConv2d if isinstance(mod, nn.Conv2d) else GpuLinear)(mod, w, path, dt, dev)
            swaps.append((name, new))
            paths[name] = path
    for name, new in swaps:
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, new)
    net = net.to(dev)
    for m in net.modules():       # batch norm and friends run in the float dtype
        if not isinstance(m, (GpuConv2d, GpuLinear, GemmOp)):
            for p in m.parameters(recurse=False):
                p.data = p.data.to(dt)
            for bn, b in m.named_buffers(recurse=False):
                if b is not None and b.is_floating_point():
                    setattr(m, bn, b.to(dt))
    return net.eval(), paths


def cuda_point(applied, x, dtype: str = "fp16") -> Callable[[], dict]:
    """One synchronised forward pass on the GPU; per planned layer its CUDA-event seconds."""
    net, paths = gpu_network(applied, dtype, "cuda")
    dt = DTYPES[dtype]
    xs = torch.as_tensor(x).to("cuda", dt)
    events: dict = {}
    for name, mod in net.named_modules():
        if name in paths:
            def pre(_m, _a, name=name):
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                events[name] = [e]

            def post(_m, _a, _o, name=name):
                e = torch.cuda.Event(enable_timing=True)
                e.record()
                events[name].append(e)
            mod.register_forward_pre_hook(pre)
            mod.register_forward_hook(post)

    def run() -> dict:
        events.clear()
        with torch.inference_mode():
            net(xs)
        torch.cuda.synchronize()
        return {k: v[0].elapsed_time(v[1]) * 1e-3 for k, v in events.items() if len(v) == 2}
    return run
