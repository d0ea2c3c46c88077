"""Offline demo world: synthetic H&E histology patches, datasets and a pretrained tiny CLIP."""
