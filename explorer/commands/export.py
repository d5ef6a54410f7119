"""``bitscape export``: a fine-tuned planned model as standard ONNX (QDQ), or a plan as a
per-layer CSV table or a layer -> config JSON mapping."""
from __future__ import annotations

import sys

from .common import check_out, print_json


def register(sub) -> None:
    p = sub.add_parser("export", help="export a fine-tuned model as ONNX, or a plan as a table or mapping")
    kinds = p.add_subparsers(dest="export_kind", metavar="KIND")
    kinds.required = True

    o = kinds.add_parser("onnx", help="write the fine-tuned, quantized network as ONNX with QuantizeLinear/"
                                      "DequantizeLinear nodes (checked by onnxruntime)")
    o.add_argument("--checkpoint", required=True, help="model saved by `bitscape finetune --save`")
    o.add_argument("--out", required=True, help="ONNX file to write")
    o.add_argument("--model", default=None, help="model id (default: the checkpoint's; must match it)")
    o.add_argument("--dataset", default=None, help="dataset id (default: the checkpoint's; must match it)")
    o.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    o.add_argument("--integer", action="store_true",
                   help="fold batch norm into quantized convolutions with int32 biases, so onnxruntime runs them "
                        "as integer convolutions (faster; activations near a rounding edge may move a level: "
                        "use --verify to see the agreement)")
    o.add_argument("--verify", action="store_true",
                   help="run the exported model with onnxruntime over the test set next to the engine's model")
    o.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    o.set_defaults(func=run_onnx)

    for kind, what in (("table", "the plan as a per-layer CSV table"),
                       ("mapping", "the plan as a JSON mapping from layer name to config")):
        t = kinds.add_parser(kind, help=f"write {what}")
        t.add_argument("--model", default=None, help="zoo model or package.module:function "
                                                     "(default: the checkpoint's, else lenet5)")
        t.add_argument("--dataset", default=None, help="dataset id (default: the model's usual dataset)")
        src = t.add_mutually_exclusive_group(required=True)
        src.add_argument("--plan", help="plan JSON file")
        src.add_argument("--checkpoint", help="take the plan (and model, dataset) from a saved planned model")
        t.add_argument("--out", default="-", help="file to write (default: stdout)")
        t.set_defaults(func=run_table, export_kind=kind)


def run_onnx(args) -> int:
    from engine.export import export_checkpoint, read_metadata, verify
    from engine.export.onnx import OPSET
    from engine.fileio import atomic_write_bytes

    check_out(args.out, inputs={"--checkpoint": args.checkpoint})
    ex = export_checkpoint(args.checkpoint, args.model, args.dataset, args.data_dir, integer=args.integer)
    atomic_write_bytes(args.out, ex.data)
    md = read_metadata(ex.data)
    out = {"out": args.out, "bytes": len(ex.data), "opset": OPSET, "model": ex.meta["model"],
           "dataset": ex.meta["dataset"], "activation_containers": md.get("bitscape.act_containers", ""),
           "form": md.get("bitscape.form", ""), "bias": md.get("bitscape.bias", "")}
    if args.verify:
        out.update(verify(ex.data, ex.applied.model, ex.dataset.x_test, ex.dataset.y_test).to_dict())
    if args.json:
        print_json(out)
        return 0
    print(f"wrote {args.out} ({len(ex.data):,} bytes, ONNX opset {OPSET}): {out['model']} on {out['dataset']}")
    if args.verify:
        print(f"verify on the test set ({out['examples']} examples): agreement {100 * out['agreement']:.2f}% "
              f"({out['disagreements']} predictions differ)")
        print(f"accuracy: onnxruntime {100 * out['candidate_accuracy']:.2f}%  "
              f"engine {100 * out['reference_accuracy']:.2f}%"
              f"  (max |logit difference| {out['max_abs_logit_diff']:.3g})")
    return 0


def _plan_source(args):
    from engine.errors import UserError
    from engine.fileio import clip
    from engine.models.checkpoint import load_state, planned_meta
    from engine.models.zoo import ZOO
    from engine.plans.plan import Plan
    if args.checkpoint:
        _, meta = load_state(args.checkpoint)
        pm = planned_meta(meta, args.checkpoint)
        for what, held in (("model", pm.model), ("dataset", pm.dataset)):
            given = getattr(args, what)
            if given is not None and given != held:
                raise UserError(f"checkpoint {args.checkpoint!r} holds {what} {clip(held)}, not {clip(given)}")
        return pm.plan, pm.model, pm.dataset
    model = args.model or "lenet5"
    dataset = args.dataset
    if dataset is None:
        if model not in ZOO:
            raise UserError(f"--dataset is required with your own model {clip(model)}")
        dataset = ZOO[model].datasets[0]
    plan = Plan.load(args.plan)
    plan.check_model(model)
    return plan, model, dataset


def run_table(args) -> int:
    from engine.export import mapping_json, table_csv
    from engine.fileio import atomic_write_text
    from engine.models.data import dataset_spec
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze

    check_out(args.out, inputs={"--checkpoint": args.checkpoint, "--plan": args.plan})
    plan, model_id, dataset_id = _plan_source(args)
    spec = dataset_spec(dataset_id)
    topo = analyze(build_model(model_id, spec.input_shape, spec.num_classes), spec.input_shape)
    text = table_csv(plan, topo) if args.export_kind == "table" else mapping_json(plan, topo, model_id, dataset_id)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(args.out, text)
    return 0
