"""The one place for the protocol's defaults and the bounds a request must respect.

Every layer (the trainer, jobs, the CLI, the app) reads its default shots, seed, epochs, bins and
bootstrap size from here, and checks user-supplied values against :data:`LIMITS`.
"""
from __future__ import annotations

__all__ = ["SHOTS", "SEED", "EPOCHS", "N_BINS", "N_BOOT", "N_BOOT_INTERACTIVE", "N_VIEWS", "BATCH_SIZE", "LR",
           "N_CTX", "MAX_BATCH_PROMPTS", "ALPHA", "HIGH_CONFIDENCE", "DEFAULT_HEADS", "LIMITS", "PROTOCOL",
           "UPLOAD_DAYS", "PREVIEW_SIDE"]

SHOTS = 8  #: labelled training images per class (the paper's k)
SEED = 1  #: the split and training seed
EPOCHS = 50  #: training epochs (the paper's schedule)
N_BINS = 10  #: calibration bins (ECE, MCE, reliability diagrams)
N_BOOT = 1000  #: bootstrap resamples for the intervals of a stored evaluation
N_BOOT_INTERACTIVE = 300  #: bootstrap resamples for the app's interactive reports
N_VIEWS = 10  #: cached augmented views per training image
BATCH_SIZE = 16
LR = 0.002
N_CTX = 16  #: learned context tokens
MAX_BATCH_PROMPTS = 512  #: prompts per text-encoder pass when runs train together (bounds the memory)
PROTOCOL = "paper"  #: training protocol (calibprompt.training.protocols): "paper" or "authors-code"
ALPHA = 0.1  #: conformal miscoverage: prediction sets cover the true class 90 % of the time on average
HIGH_CONFIDENCE = 0.8  #: a confidence at or above this is "highly confident"
DEFAULT_HEADS = ("zero-shot", "coop", "calibprompt")  #: the methods compared side by side
PREVIEW_SIDE = 1024  #: the long side (px) of the preview of a compared image kept in a session
#: Uploaded datasets older than this many days are removed (at app start, then hourly, and by
#: ``calibprompt store clean-uploads``); ``$CALIBPROMPT_UPLOAD_DAYS`` overrides it, 0 keeps them forever.
UPLOAD_DAYS = 30

#: Inclusive bounds of user-supplied training parameters (``None``: unbounded on that side). Shots are
#: also bounded by the smallest class of the dataset; alpha's upper bound is exclusive.
LIMITS = {
    "shots": (1, None),
    "epochs": (1, 1000),
    "seed": (0, 2**31 - 1),
    "alpha": (0.0, 1.0),
    "beta": (0.0, 100.0),
    "n_bins": (2, 100),
    "images_per_request": (1, 16),  #: images one Compare (or /assess) request may hold
    "typed_classes": (2, 1000),  #: class names typed instead of a task
    "class_name_chars": (1, 200),  #: characters in one typed class name
    "n_views": (1, 100),  #: cached augmented views per training image (memory grows with it)
    "batch_size": (1, 4096),  #: training images per step
    #: one owner's unpacked uploads, in total (``$CALIBPROMPT_UPLOAD_QUOTA_BYTES`` /
    #: ``$CALIBPROMPT_UPLOAD_QUOTA_DATASETS`` override the upper bounds)
    "upload_quota_bytes": (0, 2 * 1024**3),
    "upload_quota_datasets": (0, 20),
}
