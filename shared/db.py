"""Database URLs: the plain `sqlite:///path` and `postgresql://...` URLs users set, as the
SQLAlchemy async driver URLs the stores open."""

from __future__ import annotations

from shared.errors import ConfigurationError


def async_url(url: str, setting: str) -> str:
    """`sqlite:///p` -> `sqlite+aiosqlite:///p`, `postgresql://...` -> `postgresql+asyncpg://...`
    (driver URLs pass through); anything else is a configuration error naming `setting`."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return url
    raise ConfigurationError(
        f"{setting} must be sqlite:///<path> or postgresql://user@host/db, got "
        f"{url.split(':', maxsplit=1)[0]}:..."
    )
