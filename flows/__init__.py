"""Prefect flows that compose the annotator, trainer and serving into the loop."""
