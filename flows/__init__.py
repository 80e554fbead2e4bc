"""Prefect flows that compose the annotator, trainer and serving into the loop.

Entry points call :func:`flows.prefect_server.configure_prefect` before they import a flow.
"""
