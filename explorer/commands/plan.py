"""``bitscape plan template|validate|schema``: write and check per-layer plans."""
from __future__ import annotations

import json

from .common import add_model_args, model_dataset


def register(sub) -> None:
    p = sub.add_parser("plan", help="write, check and describe per-layer plans")
    cmds = p.add_subparsers(dest="plan_cmd", metavar="ACTION")
    cmds.required = True
    t = cmds.add_parser("template", help="print a valid plan listing every layer of a model (all FP32)")
    add_model_args(t)
    t.set_defaults(func=template)
    v = cmds.add_parser("validate", help="check a plan file against a model (exit 0 when valid, 2 when not)")
    v.add_argument("file")
    add_model_args(v)
    v.set_defaults(func=validate)
    s = cmds.add_parser("schema", help="print the plan JSON Schema")
    s.set_defaults(func=lambda args: print(json.dumps(__import__("engine.plans.plan", fromlist=["x"]).plan_schema(), indent=2)))


def topology_for(args):
    from engine.models.data import dataset_spec
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    model, dataset = model_dataset(args)
    spec = dataset_spec(dataset)
    return analyze(build_model(model, spec.input_shape, spec.num_classes), spec.input_shape)


def template(args) -> int:
    from engine.plans.plan import LayerConfig, Plan
    topo = topology_for(args)
    plan = Plan.explicit({n: LayerConfig() for n in topo.names}, model=args.model)
    print(plan.to_json())
    return 0


def validate(args) -> int:
    from engine.plans.plan import Plan
    plan = Plan.load(args.file)
    plan.check_model(args.model)
    topo = topology_for(args)
    configs = plan.resolve(topo.names)
    topo.check(configs)
    quantized = sum(1 for c in configs.values() if not c.is_float)
    print(f"ok: {args.file} is a valid plan for {args.model} ({len(configs)} layers, {quantized} quantized)")
    return 0
