"""Every path, port and tunable of bookcounter, from one object.

Values come from environment variables named ``BOOKCOUNTER_<FIELD>`` (for example
``BOOKCOUNTER_STATE_DIR=/data/bookcounter``), then from a ``.env`` file in the working
directory, then from the defaults below. All state lives under ``state_dir`` (``var/`` in
the repository by default); nothing is written anywhere else except the OS temp dir.
The Label Studio admin password and API token have no default: each install generates its
own into ``<state_dir>/secrets.env`` (:mod:`bookcounter.credentials`).
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse, urlunparse

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bookcounter.credentials import LabelStudioSecrets, load_or_create

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BOOKCOUNTER_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------
    state_dir: Path = Field(REPO_ROOT / "var", description="Root of all mutable state.")
    sample_dir: Path = Field(
        REPO_ROOT.parent / "shared" / "data" / "open-shelves",
        description="COCO sample (open-shelves) imported by the demo.",
    )

    # --- dataset store -----------------------------------------------------------------
    test_fraction: float = Field(0.15, ge=0, lt=1, description="Share of new unsplit images sent to test.")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="Share of new unsplit images sent to val.")

    # --- SAM -------------------------------------------------------------------------------
    sam_model_type: str = Field("vit_t", description="vit_t (MobileSAM), vit_b, vit_l or vit_h.")
    sam_checkpoint: Path | None = Field(None, description="SAM checkpoint; else looked up in models_dir.")
    embedding_cache_mb: int = Field(2048, description="Size bound of the on-disk SAM embedding cache.")
    sam_prompt_runtime: Literal["onnx", "torch"] = Field(
        "onnx", description="Runs SAM's prompt encoder + mask decoder: onnx (ONNX Runtime, exported once) or torch."
    )
    sam_onnx_threads: int = Field(2, ge=1, description="ONNX Runtime intra-op threads for SAM's prompt path.")

    # --- Label Studio --------------------------------------------------------------------
    ls_host: str = "127.0.0.1"
    ls_port: int = 8089
    ls_username: str = "admin@bookcounter.local"
    ls_password: SecretStr | None = Field(None, description="Admin password; default: generated into secrets.env.")
    ls_token: SecretStr | None = Field(
        None,
        max_length=40,
        description="Legacy API token (at most 40 characters); default: generated into secrets.env.",
    )
    ls_project_title: str = "Books"
    ls_venv: Path = Field(REPO_ROOT / ".venv-labelstudio", description="Venv holding the Label Studio server.")
    ls_database_url: str | None = Field(
        None, description="postgresql://user:pw@host:port/db: Label Studio's database on PostgreSQL instead of SQLite."
    )

    # --- ML backend (interactive SAM in Label Studio) ------------------------------------
    ml_backend_host: str = "127.0.0.1"
    ml_backend_port: int = 9090
    retrain_every_n_annotations: int = Field(20, description="Start the loop after this many new annotations; 0 = off.")
    sam_random_init: bool = Field(
        False,
        description="Tests and benchmarks only: the ML backend uses random SAM weights when no checkpoint is found.",
    )

    # --- training / registry -------------------------------------------------------------
    mlflow_experiment: str = "bookcounter"
    mlflow_database_url: str | None = Field(
        None,
        description="postgresql://user:pw@host:port/db: MLflow's tracking store and registry on PostgreSQL.",
    )
    registered_model_name: str = "bookcounter-maskrcnn"
    retrain_budget_images: int = Field(
        3000,
        ge=1,
        description="Work a retrain may do, in images seen: what the nightly job affords "
        "(trainer.train.retrain_policy).",
    )
    promote_confidence: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Level of the paired bootstrap interval the promotion gate judges by (trainer/promote.py).",
    )
    promote_mae_margin: float = Field(
        0.0, ge=0, description="The whole interval must say the candidate counts better by more than this."
    )
    promote_ap_tolerance: float = Field(0.02, ge=0, description="Candidate mask AP may fall by at most this much.")

    # --- serving ---------------------------------------------------------------------------
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    reload_poll_seconds: float = 5.0
    max_upload_mb: float = 20.0
    max_megapixels: float = Field(50.0, description="Photos with more pixels are refused (HTTP 413) at every door.")
    max_in_flight: int = Field(
        2, ge=1, description="Photos POST /count holds at once (upload, decode, model); past that it answers 503."
    )
    min_photo_side: int = Field(
        64,
        ge=1,
        description="Photos whose shorter side is smaller are refused (HTTP 422): see bench/min_photo_size.py.",
    )
    api_key: SecretStr | None = Field(
        None, description="If set, the page and API ask for it (X-API-Key, Bearer, or the page's ?key=)."
    )

    # --- prefect ---------------------------------------------------------------------------
    prefect_port: int = 4200
    prefect_database_url: str | None = Field(
        None,
        description="postgresql://user:pw@host:port/db: the Prefect server's database on PostgreSQL instead of SQLite.",
    )
    loop_cron: str = Field("0 2 * * *", description="When the scheduled loop runs (cron, local time).")
    inbox_poll_seconds: float = Field(30, gt=0, description="How often `flows serve` pre-labels new inbox photos.")
    annotation_poll_seconds: float = Field(
        60, gt=0, description="How often `flows serve` counts new annotations (the webhook's backstop)."
    )
    mlflow_ui_port: int = 5000

    # --- backups ---------------------------------------------------------------------------
    backup_dir: Path | None = Field(
        None, description="Where the nightly backup writes; default <state_dir>-backups beside it."
    )
    backup_keep: int = Field(7, ge=1, description="How many nightly backups are kept.")
    backup_cron: str = Field("30 1 * * *", description="When the nightly backup runs (cron, local time).")

    @field_validator("ls_database_url", "mlflow_database_url", "prefect_database_url")
    @classmethod
    def _postgresql_url(cls, url: str | None) -> str | None:
        """A PostgreSQL URL with a database name (any driver suffix dropped), or None for SQLite."""
        if not url:
            return None
        parsed = urlparse(url)
        if parsed.scheme.split("+")[0] not in ("postgres", "postgresql") or not parsed.path.strip("/"):
            raise ValueError(f"{url!r}: expected postgresql://user:password@host:port/database")
        return urlunparse(parsed._replace(scheme="postgresql"))

    # --- derived paths (not settable on their own: move state_dir instead) ----------------
    @property
    def datasets_dir(self) -> Path:
        return self.state_dir / "datasets"

    @property
    def inbox_dir(self) -> Path:
        return self.state_dir / "inbox"

    @property
    def models_dir(self) -> Path:
        """Downloaded checkpoints (SAM, torchvision hub cache)."""
        return self.state_dir / "models"

    @property
    def embeddings_dir(self) -> Path:
        return self.state_dir / "cache" / "embeddings"

    @property
    def ls_data_dir(self) -> Path:
        return self.state_dir / "label-studio"

    @property
    def mlflow_dir(self) -> Path:
        return self.state_dir / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        """MLflow's tracking and registry store: ``mlflow_database_url`` (psycopg2), else SQLite in ``mlflow_dir``."""
        if self.mlflow_database_url:
            return self.mlflow_database_url.replace("postgresql://", "postgresql+psycopg2://", 1)
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def runs_dir(self) -> Path:
        """Training run working dirs (checkpoints, reports)."""
        return self.state_dir / "runs"

    @property
    def decision_log(self) -> Path:
        return self.state_dir / "registry" / "decisions.jsonl"

    @property
    def backups_dir(self) -> Path:
        """Nightly backups: outside the state dir, so losing it does not lose them."""
        return self.backup_dir or self.state_dir.with_name(f"{self.state_dir.name}-backups")

    @property
    def prefect_database_connection_url(self) -> str | None:
        """``PREFECT_API_DATABASE_CONNECTION_URL`` for ``prefect_database_url`` (asyncpg); None: Prefect's SQLite."""
        return self.prefect_database_url and self.prefect_database_url.replace(
            "postgresql://", "postgresql+asyncpg://", 1
        )

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    @property
    def run_dir(self) -> Path:
        """Pid files and logs of the servers bookcounter starts."""
        return self.state_dir / "run"

    @property
    def secrets_file(self) -> Path:
        """The generated Label Studio password and token (mode 0600)."""
        return self.state_dir / "secrets.env"

    @cached_property
    def ls_secrets(self) -> LabelStudioSecrets:
        """The admin password and API token in use: BOOKCOUNTER_LS_PASSWORD/TOKEN, else :attr:`secrets_file`
        (created on first use)."""
        return load_or_create(self.secrets_file, self.ls_password, self.ls_token)

    @property
    def ls_login_hint(self) -> str:
        """Where a person finds the admin login (never the password itself)."""
        where = "BOOKCOUNTER_LS_PASSWORD" if self.ls_password else str(self.secrets_file)
        return f"login {self.ls_username}, password in {where}"

    @property
    def ls_url(self) -> str:
        return f"http://{self.ls_host}:{self.ls_port}"

    @property
    def ml_backend_url(self) -> str:
        return f"http://{self.ml_backend_host}:{self.ml_backend_port}"

    @property
    def serve_url(self) -> str:
        """The counting server's page and API (``bookcounter serve``)."""
        return f"http://{self.serve_host}:{self.serve_port}"

    @property
    def prefect_url(self) -> str:
        """The Prefect server and UI that ``bookcounter ui prefect`` / ``flows serve`` start."""
        return f"http://127.0.0.1:{self.prefect_port}"

    @property
    def mlflow_ui_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_ui_port}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
