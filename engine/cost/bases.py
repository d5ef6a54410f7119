"""Base profiles of the runtimes ``bitscape measure`` times: what each runs per width, before any fit.

``bitscape calibrate --profile packed|onnxruntime|onnxruntime-integer`` (and ``bench cost --mixed``)
start from these; the fit then sets their efficiencies and host terms. They derive from the shipped
``cpu`` profile's rates (its int8 and float kernels), so they are built, not stored.
"""
from __future__ import annotations


def packed_base():
    """The shipped ``cpu`` profile, whose table is the packed deployment's kernel choice: W<=2 A<=2
    layers on the bit-serial kernel (time ~ w x a bit planes), everything else on the int8 kernel,
    whose time follows the weight's 4-bit digits only (a one-digit row for W<=4, a two-digit row
    above); the fitted efficiencies .1 / .2 / default set the real rates."""
    from engine.cost import load_profile
    from engine.cost.profiles import Profile
    d = load_profile("cpu").to_dict()
    d["name"], d["title"] = "cpu-packed", d["title"] + " (as the packed deployment runs)"
    return Profile(d, "<packed base>")


def ort_base(integer: bool = False):
    """onnxruntime as it runs bitscape's export (``measure``'s targets onnxruntime and
    onnxruntime-integer).

    ``integer``: the integer form (engine.export.onnx_model_bytes(integer=True)): weights are int8 codes at every width, fused into
    integer convolutions and matmuls; codes within +-64 (widths 1-7) run the u8s8 kernels, full-range
    8-bit codes (stored uint8 with zero point 128, engine.export.qdq) the u8u8 ones, measured ~2x
    slower on the CNN's convolutions. So a fixed-width profile on the weight's width, 1-6 run as 7,
    with the cpu profile's int8 and float rates and host terms (quantize, rescale, per-call); a
    convolution taking signed 1-bit activations (GreaterOrEqual + Where in float) runs unfused in
    float with its batch norm (host.sign_s prices the extra nodes), and so does one whose output is
    not requantized for the next layer (ResNet's second convolution of a block, whose output meets
    the shortcut; compute.unfused_conv_bits) or is clamped in float as the next layer's signed narrow
    codes (MobileNetV2's last projection; compute.clamps_signed_in_float), its int8 weights dequantized
    at every call (host.dequant_s). Both forms max-pool the next layer's uint8 codes (host.pool_s).
    The fit sets the efficiencies and host terms.

    ``integer=False``: the faithful form, whose weights are int4 at exactly 4 bits and int8
    otherwise, its batch norms float nodes (so a convolution followed by one is not fused). Measured on lenet5, only a 4-bit weight changes its time
    (W4A4 and W4A8 ~1.4x W8A8): INT4 / INT8 / FP32 units on the weight's width, 1-3 run as 8, plus
    the per-call unpacking of int4 weights (their DequantizeLinear is not fused: fc1/fc2 at 4-bit
    weights +12-14%, the convolutions' few weights ~+2%)."""
    from engine.cost import load_profile
    from engine.cost.profiles import Profile
    d = load_profile("cpu").to_dict()
    c = d["compute"]
    int8 = next(r["macs_per_s"] for r in c["table"] if (r["w"], r["a"]) == (8, 8))
    fp32 = c["float_macs_per_s"]
    d["host"]["clip_s"] = 1e-7          # activations below 8 bits pass a Clip node (engine.export.qdq)
    d["host"]["binary_s"] = d["host"]["binary_out_s"] = 0.0    # 1-bit codes are plain int8 here
    d["host"]["pool_s"] = 1e-10         # max-pooling uint8 codes: compares slower the wider the codes
    d["combine"] = "sum"
    if integer:
        d["compute"] = {"class": "fixed", "float_bits": 32, "rates": {"7": int8, "8": int8, "32": fp32},
                        "efficiency": {"7": 1.0, "8": 1.0, "32": 1.0}, "overhead_s": 0.0, "operand": "w",
                        "width_map": {str(b): 7 for b in range(1, 7)}, "storage_widths": [8, 32],
                        "signed_binary_conv_bits": 32, "unfused_conv_bits": 32, "folds_bn": True,
                        "clamps_signed_in_float": True}
        d["host"]["dequant_s"] = 2e-10  # an unfused convolution's int8 weights are dequantized at every call
        d["name"], d["title"] = "cpu-ort", "Host CPU, onnxruntime QDQ, integer form (INT8 u8s8 / u8u8, FP32)"
        return Profile(d, "<onnxruntime base>")
    d["compute"] = {"class": "fixed", "float_bits": 32, "rates": {"4": int8, "8": int8, "32": fp32},
                    "efficiency": {"4": 1.0, "8": 1.0, "32": 1.0}, "overhead_s": 0.0,
                    "operand": "w", "width_map": {"1": 8, "2": 8, "3": 8}, "storage_widths": [4, 8, 32],
                    "unfused_conv_bits": 32, "folds_bn": False}
    d["host"]["unpack_s"] = 1e-9        # int4 weights are dequantized at every call, not fused
    d["host"]["dequant_s"] = 2e-10      # and so are an unfused convolution's int8 weights
    d["host"].pop("sign_s", None)       # a signed 1-bit activation is GreaterOrEqual + Where, no conversion
    d["name"], d["title"] = "cpu-ort-faithful", "Host CPU, onnxruntime QDQ (INT4 weights at 4 bits, INT8, FP32)"
    return Profile(d, "<onnxruntime base, faithful form>")


BASES = {"packed": packed_base, "onnxruntime": ort_base, "onnxruntime-integer": lambda: ort_base(integer=True)}
