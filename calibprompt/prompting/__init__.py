"""Prompts: task files, the CoOp prompt learner, checkpoints, the Engine (heads over one image pass) and bundled prompts."""
