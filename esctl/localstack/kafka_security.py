"""What `esctl kafka start --secure` generates: a local CA and the brokers' certificate, one
SCRAM password per principal, and the files the clients read them from.

Everything lives in `<data_dir>/security/` (0700; keys and passwords 0600):

* `ca.pem` (the CA certificate: KAFKA_SSL_CAFILE), `ca.key`, `node.pem` (the brokers' key and
  certificate, for 127.0.0.1 and localhost);
* `<principal>.password` (KAFKA_SASL_PASSWORD_FILE) and `<principal>.env`, the same as
  environment variables (`set -a; . var/kafka/security/projector.env; set +a`).

The certificates are for a local cluster: a CA that lives beside the brokers is no CA a
production deployment should trust.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.kafka.acls import (
    BROKER,
    MODULE_PRINCIPALS,
    PRINCIPALS,
    AclBinding,
    create_acls,
    service_acls,
)
from shared.kafka.security import KafkaSecurity
from shared.kafka.topics import Topics
from shared.settings import (
    CommandServiceSettings,
    KafkaSettings,
    ProjectorSettings,
    ServiceSettings,
    WorkflowSettings,
)

MECHANISM = "SCRAM-SHA-512"
#: The environment variable that tells the local launchers (ServiceProcess) where the secure
#: cluster's files are: each service process then runs as its own principal.
SECURITY_DIR_ENV = "ESCTL_KAFKA_SECURITY_DIR"
#: Every environment variable of a client's Kafka security (shared.settings.KafkaSettings).
KAFKA_SECURITY_VARIABLES = frozenset(
    {
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SASL_PASSWORD_FILE",
        "KAFKA_SSL_CAFILE",
        SECURITY_DIR_ENV,
    }
)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def generate(security_dir: Path) -> None:
    """Create the CA, the brokers' certificate and every principal's password (once: files that
    exist are kept, so a restarted cluster keeps its credentials)."""
    security_dir.mkdir(parents=True, exist_ok=True)
    security_dir.chmod(0o700)
    if not (security_dir / "node.pem").exists():
        _certificates(security_dir)
    for principal in PRINCIPALS:
        path = password_path(security_dir, principal)
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(24).encode())
        if principal == BROKER:
            continue  # no client: its password is in the brokers' server.properties (0600)
        _write_private(
            security_dir / f"{principal}.env",
            "".join(f"{k}={v}\n" for k, v in client_env(security_dir, principal).items()).encode(),
        )
        # for Kafka's own tools (kafka-topics.sh ... --command-config <principal>.properties)
        props = java_client_properties(client_security(security_dir, principal))
        _write_private(
            security_dir / f"{principal}.properties",
            "".join(f"{k}={v}\n" for k, v in props.items()).encode(),
        )


def _certificates(security_dir: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = _name("esctl local Kafka CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        # the brokers are servers to clients and clients of each other (inter-broker)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    unencrypted = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    _write_private(security_dir / "ca.key", ca_key.private_bytes(pem, pkcs8, unencrypted))
    (security_dir / "ca.pem").write_bytes(ca.public_bytes(pem))
    # Kafka's PEM key store: the (PKCS#8, unencrypted) key and the certificate chain in one file
    _write_private(
        security_dir / "node.pem",
        key.private_bytes(pem, pkcs8, unencrypted) + cert.public_bytes(pem) + ca.public_bytes(pem),
    )


def password_path(security_dir: Path, principal: str) -> Path:
    return security_dir / f"{principal}.password"


def password(security_dir: Path, principal: str) -> str:
    return password_path(security_dir, principal).read_text().strip()


def client_env(security_dir: Path, principal: str) -> dict[str, str]:
    """The environment variables that make a process `principal` on the secure cluster."""
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": MECHANISM,
        "KAFKA_SASL_USERNAME": principal,
        "KAFKA_SASL_PASSWORD_FILE": str(password_path(security_dir, principal)),
        "KAFKA_SSL_CAFILE": str(security_dir / "ca.pem"),
    }


def java_client_properties(security: KafkaSecurity) -> dict[str, str]:
    """The same security for Kafka's own (Java) tools: `--command-config` properties."""
    if security.protocol == "PLAINTEXT":
        return {}
    props = {"security.protocol": security.protocol}
    if security.cafile:
        props |= {"ssl.truststore.type": "PEM", "ssl.truststore.location": security.cafile}
    if security.sasl:
        module = (
            "org.apache.kafka.common.security.plain.PlainLoginModule"
            if security.mechanism == "PLAIN"
            else "org.apache.kafka.common.security.scram.ScramLoginModule"
        )
        props |= {
            "sasl.mechanism": security.mechanism,
            "sasl.jaas.config": f'{module} required username="{security.username}" '
            f'password="{security.password}";',
        }
    return props


def client_security(security_dir: Path, principal: str) -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SASL_SSL",
        mechanism=MECHANISM,
        username=principal,
        password=password(security_dir, principal),
        cafile=str(security_dir / "ca.pem"),
    )


def service_env(security_dir: Path, module: str, env: dict[str, str]) -> dict[str, str]:
    """`env` with the credentials of the principal of service `module` (unchanged for a module
    that is no service): KAFKA_SASL_PASSWORD is dropped, the password file wins anyway."""
    principal = MODULE_PRINCIPALS.get(module)
    if principal is None:
        return env
    return {k: v for k, v in env.items() if k != "KAFKA_SASL_PASSWORD"} | client_env(
        security_dir, principal
    )


_SETTINGS: dict[str, type[ServiceSettings]] = {
    "command_service": CommandServiceSettings,
    "projector_service": ProjectorSettings,
    "workflow_service": WorkflowSettings,
}


def service_bindings(module: str, env: dict[str, str]) -> list[AclBinding]:
    """The ACLs of the principal of service `module` on the topic prefix, group and service
    name `env` gives it (TOPIC_PREFIX, GROUP_ID, SERVICE_NAME; the settings' defaults
    otherwise): a service started with a prefix of its own gets the same least privilege on its
    own names."""
    principal = MODULE_PRINCIPALS.get(module)
    if principal is None:
        return []
    cls = _SETTINGS.get(module)
    fields = cls.model_fields if cls else {}
    group_default = str(fields["group_id"].default) if "group_id" in fields else principal
    name_default = str(fields["service_name"].default) if cls else principal
    topics = Topics.from_settings(KafkaSettings(topic_prefix=env.get("TOPIC_PREFIX", "")))
    return service_acls(
        principal,
        topics,
        group_id=env.get("GROUP_ID", group_default),
        service_name=env.get("SERVICE_NAME", name_default),
    )


def default_bindings(topic_prefix: str = "") -> list[AclBinding]:
    """Every service's ACLs with the settings' default groups and names."""
    env = {"TOPIC_PREFIX": topic_prefix}
    return [b for module in MODULE_PRINCIPALS for b in service_bindings(module, env)]


async def grant(security_dir: Path, bootstrap_servers: str, bindings: list[AclBinding]) -> None:
    """Create `bindings` as `admin`."""
    await create_acls(bootstrap_servers, bindings, security=client_security(security_dir, "admin"))


__all__ = [
    "KAFKA_SECURITY_VARIABLES",
    "MECHANISM",
    "SECURITY_DIR_ENV",
    "client_env",
    "client_security",
    "default_bindings",
    "generate",
    "grant",
    "java_client_properties",
    "password",
    "service_bindings",
    "service_env",
]
