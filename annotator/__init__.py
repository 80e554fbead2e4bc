"""Annotator: SAM pre-labelling, Label Studio, the interactive ML backend and the dataset store."""
