"""The top layer: the ``bookcounter`` command (:mod:`flows.main`), the background services
(:mod:`flows.services`), backups, and the Prefect flows that compose the annotator, trainer and
serving into the loop.

Entry points call :func:`flows.prefect_server.configure_prefect` before they import a flow.
"""
