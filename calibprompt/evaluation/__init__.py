"""Evaluation: calibration metrics, the typed calibration report, reader agreement and figures."""
