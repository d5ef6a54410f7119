"""bitscape's engine: plans, quantizers, sparsity, widening, fine-tuning, cost models, kernels.

Importable without Panel. The one verb is ``engine.plans.apply.apply_plan(model, plan, input_shape)``;
``engine.explore.pipeline.evaluate_plan`` turns a plan into an Evaluation record.
"""
