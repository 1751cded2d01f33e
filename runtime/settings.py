"""One typed, frozen settings object, read once from PULSE_* variables and CLI flags.

Every field is listed in ``.env.example`` and in ``pulse --help``. Secrets are
``SecretStr`` and never printed.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from upath import UPath

from runtime.errors import PulseError

LIBRDKAFKA_LOG = logging.getLogger("pulse.librdkafka")
LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)

# Values handed to the JVM as text. Checked here, so a typo is one line naming the
# variable instead of a Java stack trace after a JVM start (or a broker that never starts).
_TRIGGER_UNIT = r"\d+(?:\.\d+)?\s+(?:week|day|hour|minute|second|millisecond|microsecond)s?"
TRIGGER_INTERVAL = re.compile(
    rf"\s*(?:interval\s+)?{_TRIGGER_UNIT}(?:\s+{_TRIGGER_UNIT})*\s*", re.IGNORECASE
)  # what Spark's Trigger.ProcessingTime parses (no months or years, no "5s")
SPARK_MEMORY = re.compile(r"\d+(?:[kmgtp]b?|b)?", re.IGNORECASE)  # spark.*.memory
JVM_HEAP = re.compile(r"\d+[kmgt]?", re.IGNORECASE)  # -Xmx/-Xms: no "b" suffix
SPARK_MASTER = re.compile(
    r"local(?:\[(?:\d+|\*)(?:,\d+)?\])?|local-cluster\[[\d, ]+\]|yarn|(?:spark|k8s|mesos)://\S+"
)
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's legal topic names
#: Attempts of one object-store request by the Python clients (s3fs here, pyarrow in
#: storage.objects) with the AWS "standard" retry mode: a random wait of up to 2^n s,
#: capped at 20 s, between attempts, so about 3 minutes in all. A store that is down for
#: less (SeaweedFS SIGKILLed for 60 s and restarted: 90 s) is ridden through; the
#: default (3 attempts) gave up within seconds (docs/faults.md, case 9).
S3_ATTEMPTS = 15


class Settings(BaseSettings):
    """Everything that changes between a laptop and a cluster, and nothing else."""

    model_config = SettingsConfigDict(
        env_prefix="PULSE_", env_file=".env", frozen=True, extra="ignore",
        arbitrary_types_allowed=True,
    )  # fmt: skip

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol"
    )
    kafka_sasl_mechanism: str | None = Field(None, description="SASL mechanism, e.g. PLAIN")
    kafka_sasl_username: str | None = Field(None, description="SASL username")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret)")
    topic_transactions: str = Field("transactions", description="transactions topic name")
    topic_partitions: int = Field(3, ge=1, description="partitions of the transactions topic")
    topic_retention_ms: int = Field(
        7 * 24 * 3600 * 1000, description="retention.ms of the transactions topic (-1: forever)"
    )

    # Local broker (`pulse broker`)
    broker_port: int = Field(9092, ge=1, le=65535, description="local broker port")
    controller_port: int = Field(9093, ge=1, le=65535, description="local KRaft controller port")
    broker_heap: str = Field("512m", description="local broker JVM heap")

    # Storage and JVM cache
    data_root: UPath = Field(
        UPath("data"),
        description="root of every store: a local path, or s3://BUCKET/PREFIX (PULSE_S3_*)",
    )
    s3_endpoint: str | None = Field(
        None, description="S3 endpoint URL, for an S3-compatible store (unset: AWS)"
    )
    s3_region: str = Field("us-east-1", description="S3 region")
    s3_access_key_id: SecretStr | None = Field(
        None, description="S3 access key id (secret; unset: the AWS default chain)"
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key (secret)")
    local_dir: Path | None = Field(
        None,
        description="this machine's own files: the local broker, the SQLite online store, "
        "logs (unset: the data root when it is local, else ./data)",
    )
    jvm_cache: Path = Field(
        Path.home() / ".cache" / "pulse" / "jvm", description="cache for Maven-resolved jars"
    )

    # Spark
    spark_master: str = Field("local[2]", description="Spark master URL")
    spark_driver_memory: str = Field("4g", description="spark.driver.memory")
    spark_executor_memory: str = Field("4g", description="spark.executor.memory")
    spark_shuffle_partitions: int = Field(4, ge=1, description="spark.sql.shuffle.partitions")

    # Streaming
    # 1 s: an event is served (look-up reflects it, score included) within 2 s at p95
    # with 1.37M customers at 2,000 events/s (`pulse bench view`); 5 s gave 6 s
    trigger_interval: str = Field("1 second", description="micro-batch trigger interval")
    max_offsets_per_trigger: int = Field(200_000, ge=1, description="Kafka offsets per batch")
    snapshot_interval_seconds: int = Field(
        300,
        ge=0,
        description="publish the stream's full feature snapshot at most this often "
        "(0: after every micro-batch that changed the state)",
    )
    fail_on_data_loss: bool = Field(
        True,
        description="stop the stream when Kafka deleted records it had not read yet "
        "(retention); false skips them, losing those events",
    )
    allowed_lateness_days: int = Field(
        3, ge=0, le=60, description="late events within this update state (<= 60 days)"
    )
    console_rows: int = Field(
        20, ge=1, description="`pulse stream --console`: customers shown per micro-batch"
    )

    # Serving
    online_store: Literal["sqlite", "redis"] = Field(
        "sqlite", description="online store: sqlite (embedded, one file) or redis"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (online_store=redis)")
    api_host: str = Field(
        "127.0.0.1", description="`pulse serve` address (any other than loopback needs a token)"
    )
    api_port: int = Field(8000, ge=1, le=65535, description="`pulse serve` port")
    api_token: SecretStr | None = Field(
        None, description="bearer token `pulse serve` requires of every request (secret)"
    )
    api_stale_seconds: int = Field(
        300, ge=1, description="`GET /health` answers 503 when the last batch is older than this"
    )

    # Batch
    churn_horizon_days: int = Field(30, ge=1, description="churn label horizon H (days)")

    @field_validator("data_root", mode="before")
    @classmethod
    def _check_data_root(cls, value: Any) -> UPath:
        text = str(value)
        scheme = text.split("://", 1)[0] if "://" in text else ""
        if scheme not in ("", "file", "s3", "s3a"):
            raise ValueError("not a local path or an s3://BUCKET/PREFIX URL")
        if scheme in ("s3", "s3a") and not text.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError("an S3 data root names its bucket: s3://BUCKET/PREFIX")
        if scheme == "file":
            return UPath(text.removeprefix("file://"))  # a local path like any other
        return UPath(text.replace("s3a://", "s3://", 1)) if scheme else UPath(text)

    @field_validator("s3_endpoint", "local_dir", "s3_access_key_id", "s3_secret_access_key",
                     mode="before")  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value  # `PULSE_S3_ENDPOINT=` as .env.example has it

    @field_validator("s3_endpoint")
    @classmethod
    def _check_s3_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/\s]+/?", value):
            raise ValueError("not an endpoint URL such as http://127.0.0.1:8333")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _root_with_credentials(self) -> Settings:
        """An object-store root carries its endpoint and credentials (fsspec's options)."""
        if self.on_object_store:
            object.__setattr__(self, "data_root", UPath(str(self.data_root), **self.s3_options()))
        return self

    @property
    def on_object_store(self) -> bool:
        """True when the data root is in an object store (s3://), not on a local disk."""
        return getattr(self.data_root, "protocol", "") == "s3"

    @property
    def local_root(self) -> Path:
        """Where this machine keeps files that are not shared data (``local_dir``)."""
        if self.local_dir is not None:
            return self.local_dir
        return Path("data") if self.on_object_store else Path(str(self.data_root))

    def s3_options(self) -> dict[str, Any]:
        """s3fs options: endpoint, region, credentials (secrets included), no listing cache.

        A cached listing would show a reader a directory as it was (a registry without
        its newest version), so every listing asks the store.
        """
        options: dict[str, Any] = {
            "use_listings_cache": False,
            "client_kwargs": {"region_name": self.s3_region},
            "config_kwargs": {"retries": {"mode": "standard", "max_attempts": S3_ATTEMPTS}},
        }
        if self.s3_endpoint:
            options["endpoint_url"] = self.s3_endpoint
        if self.s3_access_key_id and self.s3_secret_access_key:
            options["key"] = self.s3_access_key_id.get_secret_value()
            options["secret"] = self.s3_secret_access_key.get_secret_value()
        return options

    @field_validator("trigger_interval")
    @classmethod
    def _check_trigger_interval(cls, value: str) -> str:
        if not TRIGGER_INTERVAL.fullmatch(value):
            raise ValueError("not a trigger interval such as '5 seconds' or '1 minute'")
        return value

    @field_validator("spark_driver_memory", "spark_executor_memory")
    @classmethod
    def _check_spark_memory(cls, value: str) -> str:
        if not SPARK_MEMORY.fullmatch(value):
            raise ValueError("not a memory size such as '4g' or '512m'")
        return value

    @field_validator("broker_heap")
    @classmethod
    def _check_broker_heap(cls, value: str) -> str:
        if not JVM_HEAP.fullmatch(value):
            raise ValueError("not a JVM heap size such as '512m' or '2g'")
        return value

    @field_validator("spark_master")
    @classmethod
    def _check_spark_master(cls, value: str) -> str:
        if not SPARK_MASTER.fullmatch(value):
            raise ValueError(
                "not a Spark master URL (local[N], spark://HOST:PORT, yarn, k8s://URL)"
            )
        return value

    @field_validator("topic_transactions")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if not TOPIC_NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError("not a Kafka topic name (letters, digits, '.', '_', '-')")
        return value

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) connection settings, secrets included."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
            # librdkafka logs every failed connect to stderr; route it through logging,
            # where it is quiet unless `pulse -v`. Our own errors say what went wrong.
            "logger": LIBRDKAFKA_LOG,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return conf

    def spark_kafka_options(self) -> dict[str, str]:
        """Options for Spark's Kafka source/sink (``kafka.``-prefixed consumer config)."""
        opts = {
            "kafka.bootstrap.servers": self.kafka_bootstrap,
            "kafka.security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            opts["kafka.sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username and self.kafka_sasl_password:
            user = self.kafka_sasl_username
            pwd = self.kafka_sasl_password.get_secret_value()
            scram = (self.kafka_sasl_mechanism or "").upper().startswith("SCRAM-")
            module = "scram.ScramLoginModule" if scram else "plain.PlainLoginModule"
            opts["kafka.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.{module} required "
                f'username="{user}" password="{pwd}";'
            )
        return opts

    # Data-root layout: one place that names every directory.
    @property
    def lake_dir(self) -> UPath:
        """Append-only master dataset of valid events."""
        return self.data_root / "lake" / "transactions"

    @property
    def quarantine_dir(self) -> UPath:
        """Malformed or invalid records with the reason."""
        return self.data_root / "quarantine"

    @property
    def features_dir(self) -> UPath:
        """Published live feature snapshots."""
        return self.data_root / "features" / "live"

    @property
    def checkpoint_dir(self) -> UPath:
        """Streaming checkpoints (one sub-directory per named query)."""
        return self.data_root / "checkpoints"

    @property
    def state_dir(self) -> UPath:
        """The speed layer's keyed per-customer state (derived data, not a checkpoint)."""
        return self.data_root / "state"

    @property
    def online_store_path(self) -> Path:
        """The embedded online store (SQLite), one record per customer: a local file."""
        return self.local_root / "online" / "customers.db"

    @property
    def models_dir(self) -> UPath:
        """Model registry: models/<name>/<version>/ and CURRENT pointers."""
        return self.data_root / "models"

    @property
    def outputs_dir(self) -> UPath:
        """Versioned model outputs."""
        return self.data_root / "outputs"

    @property
    def serving_dir(self) -> UPath:
        """Published customer-view snapshots."""
        return self.data_root / "serving" / "customer_view"

    @property
    def broker_dir(self) -> Path:
        """Local broker: config, KRaft storage, logs, pid (this machine's)."""
        return self.local_root / "kafka"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with non-None CLI overrides on top.

    An invalid value is a PulseError naming the setting's environment variable.
    """
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else "?"
        secret = any(word in name for word in ("password", "secret", "key_id", "token"))
        value = "<secret>" if secret else repr(err.get("input"))
        reason = str(err["msg"]).removeprefix("Value error, ")  # our validators' own words
        raise PulseError(f"invalid setting PULSE_{name.upper()}={value}: {reason}") from None


def describe_settings() -> str:
    """One line per setting: the environment variable, its default and what it is."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.default
        lines.append(f"  PULSE_{name.upper():<28} {field.description} (default: {default})")
    return "\n".join(lines)


def revalidated(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with ``changes``, validated again: ``model_copy`` skips validation, so
    a new data root given that way is not parsed, and an S3 one lacks its credentials."""
    current = {name: getattr(settings, name) for name in Settings.model_fields}
    return Settings(**{**current, **changes})


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``PULSE_*`` variables that give them back (secrets included):
    what a child process (a `pulse` command, a server worker) is configured by."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = str(value).lower()
        env[f"PULSE_{name.upper()}"] = str(value)
    return env
