"""How this process authenticates to Kafka: TLS and SASL settings for every client it builds.

A process is one Kafka principal (a service, `esctl`, a test harness): the credentials belong to
the process, not to each call site, so the client factories of `shared.kafka.clients` apply the
process's security to every producer, consumer and admin client they build. The composition
root sets it from its settings (`use_security`); without that it is read once from the
environment (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_CAFILE`). A test that needs a
second principal in one process passes `security=` to a factory.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from shared.errors import ConfigurationError
from shared.settings import KafkaSettings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_SSL")


@dataclass(frozen=True)
class KafkaSecurity:
    """The security of a Kafka connection: protocol, SASL principal and CA file."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: str = field(default="", repr=False)
    cafile: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigurationError(
                f"KAFKA_SECURITY_PROTOCOL={self.protocol} is not one of {', '.join(PROTOCOLS)}"
            )
        if self.sasl and not (self.username and self.password):
            raise ConfigurationError(
                "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE)"
            )
        if self.cafile and not Path(self.cafile).is_file():
            raise ConfigurationError(f"KAFKA_SSL_CAFILE={self.cafile}: no such file")

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> KafkaSecurity:
        password = settings.kafka_sasl_password
        if settings.kafka_sasl_password_file:
            try:
                password = Path(settings.kafka_sasl_password_file).read_text().strip()
            except OSError as exc:
                raise ConfigurationError(
                    f"KAFKA_SASL_PASSWORD_FILE={settings.kafka_sasl_password_file}: "
                    f"{exc.strerror or exc}"
                ) from None
        return cls(
            protocol=settings.kafka_security_protocol,
            mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_sasl_username,
            password=password,
            cafile=settings.kafka_ssl_cafile,
        )

    @property
    def sasl(self) -> bool:
        return self.protocol == "SASL_SSL"

    @property
    def principal(self) -> str:
        """Who the broker sees: `User:<name>`, or ANONYMOUS without SASL."""
        return f"User:{self.username}" if self.sasl else "User:ANONYMOUS"

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the broker's certificate and host name against `cafile` (or the system's
        CAs when empty)."""
        if self.protocol == "PLAINTEXT":
            return None
        context: ssl.SSLContext = create_ssl_context(cafile=self.cafile or None)
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of aiokafka's producer, consumer and admin client."""
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {
            "security_protocol": self.protocol,
            "ssl_context": self.ssl_context,
        }
        if self.sasl:
            kwargs |= {
                "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        return kwargs


_process_security: KafkaSecurity | None = None


def use_security(security: KafkaSecurity) -> None:
    """Make `security` the one of every client this process builds from now on."""
    global _process_security  # noqa: PLW0603  # the process's principal, set by its composition root
    _process_security = security


def process_security() -> KafkaSecurity:
    """The process's security: set by `use_security`, else read once from the environment."""
    global _process_security  # noqa: PLW0603  # read once, then kept
    if _process_security is None:
        _process_security = KafkaSecurity.from_settings(KafkaSettings())
    return _process_security


def reset_security() -> None:
    """Forget the process's security (it is read from the environment again on next use)."""
    global _process_security  # noqa: PLW0603  # see use_security
    _process_security = None
