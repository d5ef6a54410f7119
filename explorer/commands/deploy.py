"""``bitscape deploy``: pack a fine-tuned planned network for the bit-packed kernels, and verify it."""
from __future__ import annotations

from .common import check_out, print_json


def register(sub) -> None:
    p = sub.add_parser("deploy", help="pack a fine-tuned planned network (bit-packed kernels) and verify it")
    p.add_argument("--checkpoint", required=True, help="planned checkpoint written by `bitscape finetune --save`")
    p.add_argument("--out", default=None, help="write the packed network here (one safetensors file)")
    p.add_argument("--verify", action="store_true",
                   help="run the packed and the fake-quantized network over the test set and print the agreement")
    p.add_argument("--threads", type=int, default=1, help="kernel threads (default 1)")
    p.add_argument("--data-dir", default=None, help="directory holding the dataset's files (for --verify)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine import deploy as D
    from engine.errors import UserError
    from engine.models.checkpoint import load_planned, planned_meta
    from engine.models.data import load_dataset

    if not args.out and not args.verify:
        raise UserError("give --out FILE (write the packed network) and/or --verify")
    if not 1 <= args.threads <= 8:
        raise UserError(f"--threads must be in 1..8 (got {args.threads})")
    check_out(args.out, inputs={"--checkpoint": args.checkpoint})
    data = None
    if args.verify:
        from engine.models.checkpoint import load_state
        _, meta0 = load_state(args.checkpoint)
        data = load_dataset(planned_meta(meta0, args.checkpoint).dataset, root=args.data_dir)
    applied, meta = load_planned(args.checkpoint, data=data)
    ev = meta.get("evaluation", {})
    info = {"model": meta.get("model"), "dataset": meta.get("dataset"), "plan": meta.get("plan"),
            "checkpoint": str(args.checkpoint), "test_accuracy": ev.get("test_accuracy"),
            "status": ev.get("status")}
    net = D.deploy(applied, threads=args.threads, meta=info)
    summary = net.summary()
    if args.out:
        D.save_packed(net, args.out)
        net = D.load_packed(args.out)   # verify what was written, not what is in memory
    out = {"path": args.out, "model": info["model"], "dataset": info["dataset"], **summary}
    if args.verify:
        out["verify"] = D.verify(applied, net, data.x_test, data.y_test).to_dict()
    if args.json:
        print_json(out)
        return 0 if not args.verify or out["verify"]["agreement"] == 1.0 else 1
    print(f"{info['model']} on {info['dataset']}: {len(summary['layers'])} layers"
          + (f" -> {args.out}" if args.out else ""))
    head = f"{'layer':<14} {'type':<7} {'config':<14} {'kernel':<18} {'bits/w':>6} {'packed B':>10} {'fp32 B':>10}"
    print(head)
    print("-" * len(head))
    from engine.plans.plan import LayerConfig
    for r in summary["layers"]:
        label = LayerConfig(**r["config"]).label() if r["config"] else ""
        print(f"{r['name'][:14]:<14} {r['type']:<7} {label[:14]:<14} {r['kernel'][:18]:<18} "
              f"{r['bits_per_weight']:>6.2f} {r['bytes']:>10,} {r['fp32_bytes']:>10,}")
        for g in r["gemms"].values():
            if g.get("note"):
                print(f"{'':<14} note: {g['note']}")
    print("-" * len(head))
    print(f"total {summary['total_packed_bytes']:,} B packed (weights {summary['packed_weight_bytes']:,} B + "
          f"scales/sums/biases {summary['meta_bytes']:,} B) vs {summary['fp32_bytes']:,} B fp32: "
          f"{summary['compression']:.2f}x smaller")
    if args.verify:
        v = out["verify"]
        print(f"verify on the {v['examples']} test examples: same prediction on "
              f"{v['examples'] - v['disagreements']}/{v['examples']} ({v['agreement']:.2%}); max |logit diff| "
              f"{v['max_abs_logit_diff']:.3g}; accuracy fake-quant {v['reference_accuracy']:.2%}, "
              f"packed {v['candidate_accuracy']:.2%}")
        return 0 if v["agreement"] == 1.0 else 1
    return 0
