"""Settings read from the environment (pydantic-settings).

Each service has one settings class; every field maps to an upper-case environment variable of the
same name (`kafka_bootstrap_servers` <- `KAFKA_BOOTSTRAP_SERVERS`). `env_var_names()` lists them,
which the docker-compose test uses to check that the compose file sets only variables that exist.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The key store of personal data: shared by the command service, the query service and `esctl`.
KEY_STORE_DEFAULT = "sqlite:///./var/keys.sqlite3"


# --- key store: envelope encryption of the per-subject keys (issue 17, item 5: stores) ---------


class KeyEncryptionSettings(BaseSettings):
    """The key-encryption key (KEK) that wraps every key of the key store (`shared/kek.py`):
    whoever opens the key store needs it. Base64 of 32 random bytes (`esctl keys new-kek`)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    key_encryption_key: SecretStr = Field(
        default=SecretStr(""), description="the current KEK (base64); or KEY_ENCRYPTION_KEY_FILE"
    )
    key_encryption_key_file: str = Field(
        default="", description="a file holding the current KEK (base64), e.g. a mounted secret"
    )
    key_encryption_key_previous: SecretStr = Field(
        default=SecretStr(""),
        description="KEKs being rotated away from (base64, comma-separated): read, never written",
    )
    key_encryption_key_previous_file: str = Field(
        default="", description="a file holding previous KEKs (base64, one per line)"
    )


class KeyStoreSettings(KeyEncryptionSettings):
    """`esctl keys`: the key store and its KEKs."""

    key_store_url: str = KEY_STORE_DEFAULT


# --- end of the key store block ---------------------------------------------------------------


class KafkaSettings(BaseSettings):
    """Everything needed to talk to Kafka and to name the topics."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="", description="prefix for every topic name, e.g. 'dev.'")
    partitions: int = Field(default=6, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=5)
    commands_retention_ms: int = 7 * 24 * 3600 * 1000
    results_retention_ms: int = 24 * 3600 * 1000

    # -- Kafka security (issue 17, item 4): TLS, SASL/SCRAM; every client of the process uses
    # these (shared.kafka.security). PLAINTEXT, the default, is a broker without security.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL (TLS only) or SASL_SSL (TLS + SASL)"
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism (with SASL_SSL)"
    )
    kafka_sasl_username: str = Field(default="", description="the process's Kafka principal")
    kafka_sasl_password: str = Field(
        default="", repr=False, description="its password (or KAFKA_SASL_PASSWORD_FILE)"
    )
    kafka_sasl_password_file: str = Field(
        default="", description="a file holding the password (wins over KAFKA_SASL_PASSWORD)"
    )
    kafka_ssl_cafile: str = Field(
        default="", description="PEM CA bundle the broker's certificate is checked against"
    )


class ServiceSettings(KafkaSettings):
    """Common to every service: identity, HTTP port and body limit, logging."""

    service_name: str = "service"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    http_body_limit_bytes: int = Field(
        default=256 * 1024, ge=1024, description="larger HTTP request bodies get 413"
    )
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    kafka_startup_wait_s: float = Field(
        default=300.0,
        gt=0,
        description="how long a starting service waits for Kafka to answer before it gives up",
    )
    lag_report_interval_s: float = Field(
        default=10.0, gt=0, description="refresh of the esctl_consumer_lag_* gauges, seconds"
    )

    # --- Authenticated HTTP (issue 17: bearer JWTs, shared/auth.py; roles: shared/access.py)
    auth_enabled: bool = Field(
        default=True,
        description="false: no authentication, every request may do everything (local demos "
        "only; the service logs a warning)",
    )
    auth_hs256_secret: str = Field(
        default="",
        description="HS256 secret of local tokens (`esctl token`), at least 32 bytes",
    )
    auth_jwks_url: str = Field(
        default="",
        description="JWKS (RS256/ES256 keys) as a file path, file:// or https:// URL",
    )
    auth_issuer: str = Field(default="", description="required `iss` of tokens (empty: any)")
    auth_audience: str = Field(default="", description="required `aud` of tokens (empty: none)")
    auth_leeway_s: float = Field(
        default=30.0, ge=0, le=600, description="clock skew allowed on `exp`/`iat`, seconds"
    )


class CommandServiceSettings(ServiceSettings, KeyEncryptionSettings):
    """Command service: HTTP intake on 8001 and the transactional command processor."""

    service_name: str = "command-service"
    http_port: int = 8001
    group_id: str = "command-service"
    command_timeout_ms: int = Field(default=10_000, ge=0, description="HTTP wait for outcome")
    enqueue_timeout_ms: int = Field(
        default=10_000,
        ge=100,
        description="HTTP wait for the broker to take a command before 503 (the command may "
        "still be enqueued: a client retries with the same Idempotency-Key)",
    )
    batch_max_records: int = Field(default=500, ge=1)
    batch_max_wait_ms: int = Field(default=20, ge=0)
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    max_command_bytes: int = Field(default=512 * 1024, ge=1024)
    author_wait_ms: int = Field(default=2_000, ge=0)
    snapshot_every_events: int = Field(
        default=10_000, ge=0, description="checkpoint a partition after so many events (0: off)"
    )
    key_store_url: str = Field(
        default=KEY_STORE_DEFAULT, description="per-subject keys of personal data (erasure)"
    )
    erasure_token: str = Field(
        default="",
        description="deprecated: a static bearer credential of the admin role on this service "
        "(use an admin JWT); empty: none",
    )


class ReadStoreSettings(BaseSettings):
    """Where the read model lives, and how long its users wait for a database that is gone
    (PostgreSQL; SQLite waits on its own lock, `busy_timeout`)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    read_store_url: str = "sqlite:///./var/read-store.sqlite3"
    read_store_connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="PostgreSQL: give up a connect, and the wait for a pooled connection, "
        "after so long (read_store_unavailable)",
    )
    read_store_command_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="PostgreSQL: give up a statement after so long (read_store_unavailable)",
    )


class ProjectorSettings(ServiceSettings, ReadStoreSettings):
    """Projector: consumes the events topic into the read store; health/metrics on 8003."""

    service_name: str = "projector"
    http_port: int = 8003
    group_id: str = "projector"
    batch_max_records: int = Field(default=2000, ge=1)
    session_timeout_ms: int = Field(default=10_000, ge=6_000)


class QueryServiceSettings(ServiceSettings, ReadStoreSettings, KeyEncryptionSettings):
    """Query service: read-only HTTP on 8002 over the read store."""

    service_name: str = "query-service"
    http_port: int = 8002
    consistency_wait_ms: int = Field(default=5_000, ge=0)
    consistency_poll_ms: float = Field(
        default=10,
        gt=0,
        le=1_000,
        description="while a request waits for its consistency token, the read store's "
        "positions are read at least this often: 1 ms after a waiter arrives or the positions "
        "move, doubling up to this while nothing moves",
    )
    key_store_url: str = Field(
        default=KEY_STORE_DEFAULT, description="keys to open personal fields with"
    )


class WorkflowSettings(ServiceSettings):
    """Workflow service: sagas from events to commands; operator HTTP on 8004."""

    service_name: str = "workflow-service"
    http_port: int = 8004
    group_id: str = "workflow-service"
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    workflow_store_url: str = Field(
        default="sqlite:///./var/workflows.sqlite3",
        description="database of the activities' own tables (the search index)",
    )
    reviewers: str = Field(default="alice,bob,carol", description="comma-separated, round robin")
    review_reminder_after_s: float = Field(default=86_400, gt=0)
    review_deadline_after_s: float = Field(default=172_800, gt=0)
    publication_steps: str = Field(
        default="search_index,webhook",
        description="comma-separated activities run after a publication, in order",
    )
    webhook_url: str = Field(default="", description="empty: the webhook step is left out")
    activity_max_attempts: int = Field(default=5, ge=1)
    activity_backoff_ms: int = Field(default=500, ge=1)
    activity_backoff_max_ms: int = Field(default=60_000, ge=1)
    activity_timeout_ms: int = Field(default=5_000, ge=1)
    stuck_after_s: float = Field(default=600, gt=0, description="no progress for so long: stuck")
    workflow_retention_s: float = Field(
        default=7 * 86_400,
        gt=0,
        description="finished workflows are forgotten (tombstoned) so long after their end",
    )


class ErasureSettings(KafkaSettings):
    """`esctl erase`: the key store and the group whose progress bounds the commands purge."""

    key_store_url: str = KEY_STORE_DEFAULT
    group_id: str = Field(default="command-service", description="the command service's group")


def env_var_names(settings_cls: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads (upper-case field names, with prefix)."""
    prefix = str(settings_cls.model_config.get("env_prefix", "") or "")
    return {f"{prefix}{name}".upper() for name in settings_cls.model_fields}
