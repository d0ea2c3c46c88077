"""CalibPrompt: calibration-aware prompt learning for medical vision-language models."""
