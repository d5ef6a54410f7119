"""What the model and dataset pickers offer: the zoo, the built-in datasets, and what
``bitscape serve --model/--dataset`` registered, each labelled with whether it can be used here.

The browser only ever picks among these values; it never names code to import.
"""
from __future__ import annotations

from engine.models.baselines import baseline_path
from engine.models.data import SPECS, USER_DATASETS, dataset_availability
from engine.models.zoo import USER_MODELS, ZOO

BUILTIN_DATASETS = [d for d in SPECS if d != "synthetic"]


def dataset_names() -> list[str]:
    return list(USER_DATASETS) + BUILTIN_DATASETS


def model_names() -> list[str]:
    return list(ZOO) + list(USER_MODELS)


def model_datasets(model: str) -> list[str]:
    """The datasets a model is offered with, its default first (a user model: any dataset, user ones first)."""
    if model in ZOO:
        return [d for d in ZOO[model].datasets]
    return dataset_names()


def default_dataset(model: str) -> str:
    return model_datasets(model)[0]


def _missing_baseline(model: str, dataset: str) -> str:
    if baseline_path(model, dataset) is not None:
        return ""
    return (f"no trained FP32 network on {dataset} yet: costs and plans only; fine-tunes and estimates "
            "need one, which whoever runs the server can train")


def model_options(dataset: str) -> dict[str, str]:
    """Label -> model id. A label says what is missing, e.g. 'resnet20 (not usable yet: ...)'."""
    out = {}
    for m in model_names():
        d = dataset if dataset in model_datasets(m) else default_dataset(m)
        if dataset_availability(d):
            note = f"needs {d}, which is not installed here"
        else:
            note = _missing_baseline(m, d)
        tags = ([] if m in ZOO else ["your model"]) + ([note] if note else [])
        out[f"{m} ({'; '.join(tags)})" if tags else m] = m
    return out


def dataset_options(model: str) -> dict[str, str]:
    """Label -> dataset id, e.g. 'cifar10 (not installed: the CIFAR-10 images ... )'."""
    out = {}
    for d in dataset_names():
        why = dataset_availability(d) or (_missing_baseline(model, d) if d in model_datasets(model) else "")
        tags = ([] if d in SPECS else ["your dataset"]) + ([why] if why else [])
        out[f"{d} ({'; '.join(tags)})" if tags else d] = d
    return out


def usable(model: str, dataset: str) -> str:
    """'' when jobs can run on this pair; otherwise the reason, in words."""
    why = dataset_availability(dataset)
    if why:
        return f"{dataset} is {why}"
    return _missing_baseline(model, dataset)
