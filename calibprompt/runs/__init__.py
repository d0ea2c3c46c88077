"""Runs: the run store and reviews, request bounds, the job pipeline and the background runner."""
