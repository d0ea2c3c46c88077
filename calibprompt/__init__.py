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
"""
from calibprompt.prompting.checkpoint import load_prompt, read_prompt_metadata, save_prompt
from calibprompt.runs.compare import run_comparison, summarize
from calibprompt.runs.reproduce import PAPER_PAIRS, plan_cells, reproduce
from calibprompt.data import (
    SUPPORTED_IMAGE_SUFFIXES,
    Dataset,
    LabeledImages,
    extract_zip,
    few_shot_split,
    is_image_file,
    load_dataset,
    load_image,
    sample_few_shot,
)
from calibprompt.devices import available_devices, resolve_device
from calibprompt.prompting.engine import Engine, Head, Prediction
from calibprompt.evaluation.report import Evaluation, evaluate_head, evaluate_probs
from calibprompt.training.features import FeatureCache
from calibprompt.runs.jobs import JobRunner, TrainJob, open_dataset, run_train_job
from calibprompt.training.losses import LOSSES, METHODS, build_objective, get_loss, get_method, list_methods
from calibprompt.evaluation.metrics import (
    accuracy,
    adaptive_calibration_error,
    apply_temperature,
    bootstrap_interval,
    brier_score,
    calibration_report,
    classwise_ece,
    ece_interval,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    maximum_calibration_error,
    mean_confidence,
    negative_log_likelihood,
    reliability_bins,
)
from calibprompt.backbones import (
    BACKBONES,
    Backbone,
    BackboneSpec,
    BackboneUnavailableError,
    list_backbones,
    load_backbone,
    save_backbone,
)
from calibprompt.prompting.learner import PromptLearner
from calibprompt.runs.store import RunRecord, RunStore
from calibprompt.prompting.tasks import Task, list_tasks, load_task
from calibprompt.training.trainer import StepInfo, TrainConfig, TrainingCancelled, train_prompts
from calibprompt.training.protocols import PROTOCOLS, Protocol, get_protocol, list_protocols
from calibprompt.data.sources import DatasetSource, list_registered_datasets, register_dataset
from calibprompt.data.resolve import dataset_choices
from calibprompt.evaluation.agreement import cohen_kappa
from calibprompt.evaluation.report import CalibrationReport
from calibprompt.prompting.library import register_bundled_prompt
from calibprompt.prompting.interpret import interpret_prompt
from calibprompt.runs.requests import check_train_request
from calibprompt.evaluation.ood import KNNDistance, modality_mismatch, unknown_words
from calibprompt.data.metadata import image_metadata
from calibprompt.evaluation.conformal import ConformalClassifier, mean_set_size, set_coverage
from calibprompt.evaluation.selective import (
    accuracy_at_confidence,
    risk_coverage,
    selective_accuracy,
    threshold_for_accuracy,
)
from calibprompt.evaluation.card import (
    debiased_ece,
    kde_ece,
    paired_bootstrap,
    per_class_ece,
    seed_difference,
    smooth_ece,
)

__version__ = "0.1.0"

__all__ = [
    "BACKBONES", "Backbone", "BackboneSpec", "BackboneUnavailableError", "list_backbones", "load_backbone",
    "save_backbone", "PromptLearner", "Engine", "Head", "Prediction", "Task", "list_tasks", "load_task",
    "LOSSES", "METHODS", "get_loss", "get_method", "list_methods", "build_objective", "save_prompt",
    "load_prompt", "read_prompt_metadata", "load_image", "is_image_file", "SUPPORTED_IMAGE_SUFFIXES",
    "resolve_device", "available_devices", "accuracy", "expected_calibration_error", "maximum_calibration_error",
    "adaptive_calibration_error", "classwise_ece", "negative_log_likelihood", "brier_score", "macro_f1",
    "mean_confidence", "reliability_bins", "bootstrap_interval", "ece_interval", "calibration_report",
    "fit_temperature", "apply_temperature", "Dataset", "LabeledImages", "load_dataset", "few_shot_split",
    "sample_few_shot", "extract_zip", "FeatureCache", "TrainConfig", "StepInfo", "TrainingCancelled", "train_prompts",
    "Evaluation", "evaluate_probs", "evaluate_head", "RunStore", "RunRecord", "TrainJob", "JobRunner",
    "run_train_job", "open_dataset", "run_comparison", "summarize", "__version__",
    "DatasetSource", "register_dataset", "list_registered_datasets", "dataset_choices", "cohen_kappa",
    "CalibrationReport", "register_bundled_prompt", "check_train_request", "interpret_prompt",
    "ConformalClassifier", "set_coverage", "mean_set_size", "risk_coverage", "selective_accuracy",
    "threshold_for_accuracy", "accuracy_at_confidence",
    "KNNDistance", "modality_mismatch", "unknown_words", "image_metadata",
    "Protocol", "PROTOCOLS", "list_protocols", "get_protocol",
    "reproduce", "plan_cells", "PAPER_PAIRS",
    "per_class_ece", "kde_ece", "smooth_ece", "debiased_ece", "paired_bootstrap", "seed_difference",
]
