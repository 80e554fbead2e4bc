"""Prefect flows that compose the annotator, trainer and serving into the loop.

Importing this package points Prefect at bookcounter's state dir before Prefect itself is
imported: its database lives in ``var/prefect`` (so runs made in ephemeral mode show up when
``bookcounter ui prefect`` starts the UI on the same database), analytics are off, and when
that UI server is running the flows report to it instead of starting a temporary server.
"""

from bookcounter.settings import get_settings
from flows.prefect_server import configure_prefect_env

configure_prefect_env(get_settings())
