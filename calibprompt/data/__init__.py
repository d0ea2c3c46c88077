"""Data: images (:mod:`.images`), labelled datasets and few-shot splits (:mod:`.datasets`), and
uploaded zip archives (:mod:`.zipfiles`)."""
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
from calibprompt.data.images import DEFAULT_MAX_PIXELS, SUPPORTED_IMAGE_SUFFIXES, ImageLoadError, is_image_file, load_image
from calibprompt.data.archives import extract_zip

__all__ = [
    "DEFAULT_MAX_PIXELS", "SUPPORTED_IMAGE_SUFFIXES", "ImageLoadError", "is_image_file", "load_image",
    "LAYOUTS", "Dataset", "LabeledImages", "Sample", "few_shot_split", "from_relative_paths", "load_dataset",
    "sample_few_shot", "extract_zip",
]
