"""Annotator: SAM pre-labelling, Label Studio (project, collect, review) and the training trigger."""
