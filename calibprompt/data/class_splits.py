"""Class splits for the evaluation protocols: base-to-novel and cross-domain.

- **Base-to-novel** (Zhou et al., CoCoOp, CVPR 2022; the convention of CoOp's and BiomedCoOp's code,
  ``subsample_classes``): the K classes, in the task's label order, are split into the first
  ``m = ceil(K / 2)`` (*base*: trained and evaluated) and the remaining ``K - m`` (*novel*: evaluated
  only, with the class names of the novel classes alone). Each side is relabelled ``0..m-1`` / ``0..K-m-1``.
- **Cross-domain**: a prompt trained on one dataset is evaluated on another with the same classes (the
  same class ids, in the same label order); every image of the other dataset's test split counts, since
  none of them was trained on (all its images when it has no test split).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from calibprompt.data.layouts import Dataset, LabeledImages

__all__ = ["SIDES", "base_novel_classes", "restrict_classes", "evaluation_images", "check_same_classes",
           "stratified_subset"]

#: what a training run's classes are: all of them, or the base half of a base-to-novel split
SIDES = ("all", "base")


def base_novel_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """``(base, novel)`` label indices: the first ``ceil(K / 2)`` and the rest.

    Raises:
        ValueError: fewer than 4 classes (each side needs at least 2 classes to be a classification task).
    """
    k = int(num_classes)
    if k < 4:
        raise ValueError(f"A base-to-novel split needs at least 4 classes (2 base, 2 novel); this task has {k}. "
                         "Use a task with more classes, or leave out --base-to-novel.")
    m = math.ceil(k / 2)
    return list(range(m)), list(range(m, k))


def restrict_classes(images: LabeledImages, classes: Sequence[int]) -> LabeledImages:
    """The images of the classes ``classes`` (label indices of ``images``), relabelled by their position
    in ``classes`` (so ``classes[j]`` becomes label ``j``); the samples keep their order."""
    classes = [int(c) for c in classes]
    new_label = {old: new for new, old in enumerate(classes)}
    samples = [type(s)(s.path, new_label[s.label]) for s in images.samples if s.label in new_label]
    return LabeledImages(images.root, [images.class_ids[c] for c in classes],
                         [images.classnames[c] for c in classes], samples)


def evaluation_images(dataset: Dataset) -> LabeledImages:
    """The images a cross-domain evaluation uses: the dataset's test split, or all its images without one."""
    images = dataset.test if dataset.test is not None and len(dataset.test) else dataset.train
    if images is None or not len(images):
        raise ValueError(f"The dataset {dataset.name!r} has no images to evaluate on.")
    return images


def check_same_classes(source_ids: Sequence[str], target: Dataset, source_name: str,
                       target_name: str | None = None) -> None:
    """Refuse a cross-domain target whose classes differ from the source's (ids and order); the datasets are
    named as the user named them (``target_name``, default the target's folder name).

    Raises:
        ValueError: naming both class lists.
    """
    if list(source_ids) != list(target.class_ids):
        raise ValueError(f"A cross-domain evaluation needs the same classes in the same order: {source_name!r} has "
                         f"{', '.join(source_ids)}, but {(target_name or target.name)!r} has "
                         f"{', '.join(target.class_ids)}. Name a dataset of the same task.")


def stratified_subset(images: LabeledImages, per_class: int, seed: int = 0) -> LabeledImages:
    """At most ``per_class`` images of each class, drawn with ``numpy.random.default_rng(seed)`` (the same
    subset for the same images and seed), in their original order: what an expensive evaluation (test-time
    tuning) runs on when asked for fewer images."""
    if int(per_class) < 1:
        raise ValueError(f"Images per class must be at least 1, got {per_class}.")
    rng = np.random.default_rng(int(seed))
    labels = np.asarray(images.labels)
    keep = [int(i) for label in sorted(set(labels.tolist()))
            for i in rng.permutation(np.flatnonzero(labels == label))[:int(per_class)]]
    return images.subset(sorted(keep))

