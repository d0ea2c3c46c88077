"""CalibPrompt: calibration-aware prompt learning for medical vision-language models.

The flat public API::

    import calibprompt as cp

    backbone = cp.load_backbone("biomedclip")          # or "tiny-random" offline
    task = cp.load_task("covid")
    engine = cp.Engine(backbone)
    engine.add_zero_shot("zero-shot", task)
    engine.add_prompt("calibprompt", "runs/calibprompt-seed1.json")
    out = engine.predict([image])                        # {head: Prediction(probs, logits)}
    cp.calibration_report(out["zero-shot"].probs, labels)

Importing the package is cheap: it imports none of its submodules (nor torch, Gradio or the demo
world). The public names are listed once, in :data:`_EXPORTS` (name -> the module it lives in): ``__all__``
is its keys, and ``__getattr__`` imports a name from its module on first access (PEP 562), so
``cp.Engine`` and ``from calibprompt import Engine`` load only what ``Engine`` needs. The core
subpackages (``cp.data``, ``cp.evaluation``, ...) load on first access too.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: The one list of public names: each name -> the module it is imported from on first access (written
#: grouped by module). ``__all__``, ``__getattr__`` and ``__dir__`` all derive from it.
_EXPORTS: dict[str, str] = {
    name: module
    for module, names in {
        "calibprompt.backbones": ("BACKBONES", "Backbone", "BackboneSpec", "BackboneUnavailableError",
                                  "list_backbones", "load_backbone", "save_backbone"),
        "calibprompt.data": ("SUPPORTED_IMAGE_SUFFIXES", "Dataset", "LabeledImages", "extract_zip", "few_shot_split",
                             "is_image_file", "load_dataset", "load_image", "sample_few_shot"),
        "calibprompt.data.metadata": ("image_metadata",),
        "calibprompt.data.resolve": ("dataset_choices",),
        "calibprompt.data.sources": ("DatasetSource", "list_registered_datasets", "register_dataset"),
        "calibprompt.devices": ("available_devices", "resolve_device"),
        "calibprompt.evaluation.agreement": ("cohen_kappa",),
        "calibprompt.evaluation.calibrators": ("cross_fit", "calibrator_reports", "create_calibrator",
                                               "get_calibrator", "list_calibrators"),
        "calibprompt.evaluation.card": ("debiased_ece", "kde_ece", "paired_bootstrap", "per_class_ece",
                                        "seed_difference", "smooth_ece"),
        "calibprompt.evaluation.conformal": ("ConformalClassifier", "mean_set_size", "set_coverage"),
        "calibprompt.evaluation.metrics": ("accuracy", "adaptive_calibration_error", "apply_temperature",
                                           "bootstrap_interval", "brier_score", "calibration_report", "classwise_ece",
                                           "ece_interval", "expected_calibration_error", "fit_temperature", "macro_f1",
                                           "maximum_calibration_error", "mean_confidence", "negative_log_likelihood",
                                           "reliability_bins"),
        "calibprompt.evaluation.ood": ("KNNDistance", "modality_mismatch", "unknown_words"),
        "calibprompt.evaluation.report": ("CalibrationReport", "Evaluation", "evaluate_head", "evaluate_probs"),
        "calibprompt.evaluation.selective": ("accuracy_at_confidence", "risk_coverage", "selective_accuracy",
                                             "threshold_for_accuracy"),
        "calibprompt.prompting.checkpoint": ("load_prompt", "read_prompt_metadata", "save_prompt"),
        "calibprompt.prompting.engine": ("Engine", "Head", "Prediction"),
        "calibprompt.prompting.interpret": ("interpret_prompt",),
        "calibprompt.prompting.learner": ("PromptLearner",),
        "calibprompt.prompting.library": ("register_bundled_prompt",),
        "calibprompt.prompting.tasks": ("Task", "list_tasks", "load_task"),
        "calibprompt.runs.batch": ("run_train_jobs",),
        "calibprompt.runs.compare": ("run_comparison", "summarize"),
        "calibprompt.runs.jobs": ("JobRunner", "TrainJob", "open_dataset", "run_train_job"),
        "calibprompt.runs.reproduce": ("PAPER_PAIRS", "plan_cells", "reproduce"),
        "calibprompt.runs.requests": ("check_train_request",),
        "calibprompt.runs.store": ("RunRecord", "RunStore"),
        "calibprompt.training.batched": ("RunInputs", "train_many"),
        "calibprompt.training.features": ("FeatureCache",),
        "calibprompt.training.learners": ("create_learner", "get_learner", "list_learners"),
        "calibprompt.training.losses": ("LOSSES", "METHODS", "build_objective", "get_loss", "get_method",
                                        "list_methods"),
        "calibprompt.training.protocols": ("PROTOCOLS", "Protocol", "get_protocol", "list_protocols"),
        "calibprompt.training.test_time": ("get_test_time", "list_test_time", "test_time_predict"),
        "calibprompt.training.trainer": ("StepInfo", "TrainConfig", "TrainingCancelled", "train_prompts"),
    }.items()
    for name in names
}

#: The core subpackages, reachable as attributes (``cp.evaluation.metrics``) without importing them first.
#: The app and the demo world are not among them: ``import calibprompt.demo`` says it.
_SUBPACKAGES = frozenset({"backbones", "cluster", "data", "defaults", "devices", "errors", "evaluation", "fileio",
                          "imaging", "owners", "paths", "prompting", "runs", "service", "training"})

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Import a public name (or a core subpackage) from where it lives, on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBPACKAGES)
