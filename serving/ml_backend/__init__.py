"""The interactive ML backend for Label Studio (SAM, or the champion without it): prompts in
:mod:`~serving.ml_backend.backend`, HTTP in :mod:`~serving.ml_backend.routes`, the process and its
``bookcounter ml-backend`` commands in :mod:`~serving.ml_backend.server`."""
