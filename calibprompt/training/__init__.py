"""Training: losses and objectives, the prompt-tuning loop and the image-feature cache."""
