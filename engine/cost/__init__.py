"""Accelerator cost model: per-layer roofline costs of a plan on a target profile.

Scalar path (readable, with per-layer notes): ``cost_plan(layers, configs, profile, batch)``.
Vectorised path for sweeps: ``LayerTable``, ``PlanArrays``, ``cost_batch``.
Profiles: ``load_profile(name_or_path)``, ``list_profiles()``. Calibration: ``engine.cost.calibrate``.
"""
from engine.cost.model import CostReport, LayerCost, cost_plan, cost_topology, layer_times
from engine.cost.profiles import Profile, ProfileError, list_profiles, load_profile, profile_dirs
from engine.cost.vector import BatchCost, LayerTable, PlanArrays, cost_batch, encode_plans

__all__ = ["CostReport", "LayerCost", "cost_plan", "cost_topology", "layer_times", "Profile", "ProfileError",
           "list_profiles", "load_profile", "profile_dirs", "BatchCost", "LayerTable", "PlanArrays", "cost_batch",
           "encode_plans"]
