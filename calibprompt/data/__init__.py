"""Data: labelled datasets and few-shot splits (:mod:`.layouts`), named dataset sources (:mod:`.sources`),
a dataset and its task resolved in one place (:mod:`.resolve`), and uploaded datasets (:mod:`.uploads`). The
image readers live in :mod:`calibprompt.imaging` and the safe zip extraction in :mod:`calibprompt.archives`,
below every layer that uses them; ``load_image``, ``extract_zip`` and their companions are re-exported here
(and ``calibprompt.data.images`` / ``.metadata`` / ``.archives`` still import) so that existing code keeps
working."""
from calibprompt.data.layouts import (
    LAYOUTS,
    Dataset,
    LabeledImages,
    Sample,
    few_shot_split,
    from_relative_paths,
    load_dataset,
    sample_few_shot,
)
from calibprompt.imaging.images import DEFAULT_MAX_PIXELS, SUPPORTED_IMAGE_SUFFIXES, ImageLoadError, is_image_file, load_image
from calibprompt.archives import extract_zip

__all__ = [
    "DEFAULT_MAX_PIXELS", "SUPPORTED_IMAGE_SUFFIXES", "ImageLoadError", "is_image_file", "load_image",
    "LAYOUTS", "Dataset", "LabeledImages", "Sample", "few_shot_split", "from_relative_paths", "load_dataset",
    "sample_few_shot", "extract_zip",
]
