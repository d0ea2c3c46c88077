"""The one place for every default and every bound: the protocol's, the evaluation's, the command line's.

Every layer (the trainer, jobs, the evaluation, the CLI, the app's labels) reads its default shots, seed,
epochs, bins, bootstrap sizes, interval level and conformal coverage from here, and checks user-supplied
values against :data:`LIMITS`. Two different alphas: :data:`LOSS_ALPHA` is the loss's smoothing weight
(``--alpha`` of ``train`` / ``compare``), :data:`ALPHA` the conformal miscoverage ``1 - COVERAGE``
(``evaluate --coverage``).
"""
from __future__ import annotations

__all__ = ["SHOTS", "SEED", "EPOCHS", "N_BINS", "N_BOOT", "N_BOOT_INTERACTIVE", "N_VIEWS", "BATCH_SIZE", "LR",
           "N_CTX", "MAX_BATCH_PROMPTS", "ALPHA", "HIGH_CONFIDENCE", "DEFAULT_HEADS", "LIMITS", "PROTOCOL",
           "UPLOAD_DAYS", "PREVIEW_SIDE", "N_BOOT_TABLE", "LEVEL", "COVERAGE", "TOLERANCE", "TOP_K_TOKENS",
           "FEATURE_BATCH", "DEMO_STEPS", "WORKERS", "DEMO_SEED", "SEEDS", "METHODS", "MCE_MIN_COUNT",
           "PLOT_MIN_COUNT", "GRID_COLUMNS", "PREDICT_MODEL", "PREDICT_TASK",
           "MOMENTUM", "WEIGHT_DECAY", "WARMUP_EPOCHS", "LOSS_ALPHA", "LOSS_BETA", "RUN_NAME_CHARS", "SELECTIVE_COVERAGES"]

SHOTS = 8  #: labelled training images per class (the paper's k)
SEED = 1  #: the split and training seed
EPOCHS = 50  #: training epochs (the paper's schedule)
N_BINS = 10  #: calibration bins (ECE, MCE, reliability diagrams)
N_BOOT = 1000  #: bootstrap resamples for the intervals of a stored evaluation
N_BOOT_INTERACTIVE = 300  #: bootstrap resamples for the app's interactive reports
N_BOOT_TABLE = 200  #: bootstrap resamples of each evaluation behind a compare/reproduce table (not shown there)
LEVEL = 0.95  #: the confidence level of every bootstrap interval
MCE_MIN_COUNT = 0  #: MCE leaves out bins with fewer samples (0: every non-empty bin counts)
PLOT_MIN_COUNT = 10  #: reliability diagrams mark bins with fewer samples as too few to judge
GRID_COLUMNS = 3  #: reliability diagrams per row of a grid
N_VIEWS = 10  #: cached augmented views per training image
BATCH_SIZE = 16
LR = 0.002
MOMENTUM = 0.9  #: SGD momentum (the paper's)
WEIGHT_DECAY = 5e-4  #: SGD weight decay (the paper's)
WARMUP_EPOCHS = 1  #: epochs at the constant warm-up learning rate (the protocol's)
LOSS_ALPHA = 0.1  #: the loss's smoothing weight (LS, SMAC) when neither the task file nor the request sets it
LOSS_BETA = 1.0  #: the loss's regulariser weight (AS, ...) when neither the task file nor the request sets it
N_CTX = 16  #: learned context tokens
MAX_BATCH_PROMPTS = 512  #: prompts per text-encoder pass when runs train together (bounds the memory)
PROTOCOL = "paper"  #: training protocol (calibprompt.training.protocols): "paper" or "authors-code"
COVERAGE = 0.9  #: conformal coverage: prediction sets hold the true class 90 % of the time on average
ALPHA = round(1.0 - COVERAGE, 10)  #: conformal miscoverage, ``1 - COVERAGE`` (not the loss's smoothing alpha)
HIGH_CONFIDENCE = 0.8  #: a confidence at or above this is "highly confident"
SELECTIVE_COVERAGES = (0.8, 0.9)  #: the shares answered at which selective accuracy is reported
DEFAULT_HEADS = ("zero-shot", "coop", "calibprompt")  #: the methods compared side by side
RUN_NAME_CHARS = 80  #: characters of a run's optional name
PREVIEW_SIDE = 1024  #: the long side (px) of the preview of a compared image kept in a session
#: Uploaded datasets older than this many days are removed (at app start, then hourly, and by
#: ``calibprompt store clean-uploads``); ``$CALIBPROMPT_UPLOAD_DAYS`` overrides it, 0 keeps them forever.
UPLOAD_DAYS = 30

# -- command-line defaults (``calibprompt ... --help`` shows each) ------------------------------------------
PREDICT_MODEL = "biomedclip"  #: the backbone of ``predict``
PREDICT_TASK = "kather"  #: the task of ``predict``
SEEDS = "1,2,3"  #: the seeds of ``compare`` and ``reproduce``
METHODS = "zeroshot,coop,calibprompt"  #: the methods of ``compare`` and ``reproduce``
TOLERANCE = 1.5  #: ECE points within which a reproduced row matches the paper
TOP_K_TOKENS = 3  #: nearest vocabulary tokens per context vector (``runs --show``)
FEATURE_BATCH = 64  #: images per image-encoder call (``features``)
DEMO_SEED = 0  #: the seed of the synthetic demo world (``demo-data``, ``demo-build``)
DEMO_STEPS = 900  #: pretraining steps of the demo backbone (``demo-build``)
WORKERS = 2  #: worker processes that render the demo world

#: Inclusive bounds of user-supplied training parameters (``None``: unbounded on that side). Shots are
#: also bounded by the smallest class of the dataset; alpha's upper bound is exclusive.
LIMITS = {
    "shots": (1, None),
    "epochs": (1, 1000),
    "seed": (0, 2**31 - 1),
    "alpha": (0.0, 1.0),
    "beta": (0.0, 100.0),
    "n_bins": (2, 100),
    "coverage": (0.0, 1.0),  #: conformal coverage, both bounds exclusive
    "images_per_request": (1, 16),  #: images one Compare (or /assess) request may hold
    "typed_classes": (2, 1000),  #: class names typed instead of a task
    "class_name_chars": (1, 200),  #: characters in one typed class name
    "n_views": (1, 100),  #: cached augmented views per training image (memory grows with it)
    "batch_size": (1, 4096),  #: training images per step
    #: one owner's unpacked uploads, in total (``$CALIBPROMPT_UPLOAD_QUOTA_BYTES`` /
    #: ``$CALIBPROMPT_UPLOAD_QUOTA_DATASETS`` override the upper bounds)
    "upload_quota_bytes": (0, 2 * 1024**3),
    "upload_quota_datasets": (0, 20),
    # -- the other numeric options of the command line (calibprompt.runs.requests.CLI_LIMITS) ----------
    "cli_shots": (1, 10_000),  #: evaluate/reproduce --shots (and at most the smallest class)
    "max_batch_prompts": (1, 100_000),
    "tolerance": (0.0, 100.0),  #: reproduce: ECE points
    "limit": (1, 1_000_000),  #: runs --limit
    "top_k": (1, 100),  #: runs --top-k
    "train_per_class": (1, 10_000),
    "test_per_class": (1, 100_000),
    "shift": (0.0, 10.0),  #: demo-data: stain/scanner shift
    "workers": (1, 256),
    "steps": (1, 1_000_000),  #: demo-build: pretraining steps
    "ray_gpus_per_task": (0.0, 64.0),
    "ray_cpus_per_task": (0.0, 1024.0),  #: lower bound exclusive
    "days": (0, 100_000),  #: store clean-uploads: age of the uploads removed (0: none)
}

# -- few-shot learners (calibprompt.training.learners) ---------------------------------------------
LEARNER = "coop"  #: the learner a training run uses unless told (today's CoOp prompt)
#: training settings of the feature learners (adapters, probes) a job may override through its
#: ``learner_params``; the rest of ``learner_params`` goes to the learner's constructor
#: (a feature learner follows its published recipe, its epochs included: a job's ``epochs`` is the prompt
#: learners' schedule)
LEARNER_RECIPE_KEYS = ("optimizer", "lr", "epochs", "batch_size", "momentum", "weight_decay", "schedule")
