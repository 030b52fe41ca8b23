"""Settings, read once from the environment (every setting is listed in the README)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from app.grip import FASTLY_API_HOST, SigKey, parse_grip_url, without_credentials

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """A setting has a value the server cannot run with."""


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not 0 <= value < 3600:
        raise ConfigError(f"{name} must be between 0 and 3600, got {value}")
    return value


def _list(env: dict[str, str], name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env.get(name, default).split(",") if item.strip()]


def _secret(path: Path, nbytes: int) -> str:
    """Read a secret kept in the data folder, creating it on first run."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


@dataclass(frozen=True)
class Limits:
    """What one user (or one client address) may hold or do; past a limit the answer is 429
    (a rate) or 409 (a count). Each is a setting, listed with its default in the README."""

    max_follows: int = 5000  # nodes followed, own channel included (bans do not count)
    max_channels: int = 100  # topic channels a user owns, besides their own
    max_queues: int = 100  # Aloha queues alive at once
    max_pending: int = 100  # follow requests waiting for approval
    follows_per_minute: int = 60  # follow, unfollow and role requests a user makes
    posts_per_minute: int = 120  # posts, edits and deletes
    max_narrow_terms: int = 16  # in one Aloha narrow, each operand at most 255 characters
    max_held_per_user: int = 1000  # long-polls held for one user at once
    max_held_per_address: int = 5000  # long-polls held for one client address at once
    accounts_per_hour: int = 20  # accounts created from one address
    login_failures_per_account: int = 10  # a minute, per (account, address): slow hashes
    login_failures_per_address: int = 30  # a minute, per address, for existing accounts
    unknown_logins_per_address: int = 30  # a minute, per address, for accounts that do not exist
    hashes_at_once_per_address: int = 4  # slow hashes one address may have running
    max_sessions: int = 100  # browser sessions of one account: a login past it ends the oldest

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Limits:
        values = {
            name: _int(env, name.upper(), default, 1)
            for name, default in ((f.name, f.default) for f in fields(cls))
            if isinstance(default, int)
        }
        return cls(**values)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    port: int  # where clients connect: Pushpin's HTTP port
    origin_host: str
    origin_port: int
    publish_port: int  # Pushpin's HTTP publish port, used for the default GRIP_URL
    grip_urls: list[str]
    grip_sig_key: str
    grip_sig_iss: str
    secret_key: str
    # Every way a request may be signed by one of our proxies: GRIP_SIG_KEY's, GRIP_VERIFY_KEY's,
    # and each GRIP_URL entry's verify-key (see sig_keys)
    sig_keys: tuple[SigKey, ...]
    proxy_url: str
    hold_timeout: int = 55
    publish_timeout: int = 5
    # The publisher looks at the log this often even when no commit woke it (a safety net)
    publish_poll_seconds: int = 1
    queue_lifespan: int = 600
    limits: Limits = field(default_factory=Limits)
    # /health answers 503 when events wait and no target has accepted any for this long
    health_publish_seconds: int = 30
    idempotency_seconds: int = 86_400  # how long a post's Idempotency-Key or local_id holds
    # Retention (app/retention.py): events older than this, or beyond the newest this many,
    # are pruned with their deliveries (0: no limit of that kind), looked for this often
    retention_seconds: int = 7 * 86_400
    retention_events: int = 5_000_000
    retention_check_seconds: int = 60
    # A password check is a 50 ms scrypt hash: once an hour per active user, not every minute.
    auth_cache_seconds: int = 3600
    session_seconds: int = 14 * 86_400  # a browser session's life from its login
    # How long an origin believes a session it looked up: one ended on another node is refused
    # here within this (on the node that ended it, at once)
    session_cache_seconds: int = 5
    # Every origin of the service, host:port, for Pushpin's routes (it fails over between them)
    origins: list[str] = field(default_factory=list)
    database_pool_size: int = 10  # PostgreSQL connections per origin
    # Tests only: a transaction that appended to the log waits this long before it commits
    commit_delay: float = 0.0
    cors_origins: list[str] = field(default_factory=list)
    log_level: str = "info"
    log_format: str = "text"  # or "json": one object a line
    # GET /metrics: with a token, only with it (Bearer); without, only straight from loopback
    metrics_token: str = ""
    # Pushpin's own Prometheus metrics, on 127.0.0.1 (0: none), started by the run command
    pushpin_metrics_port: int = 5564
    pushpin_bin: str = "pushpin"
    pushpin_config: Path = Path("pushpin/pushpin.conf")
    # More certificate authorities to trust for https publish targets (a PEM bundle)
    grip_ca_file: Path | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        data_dir = Path(env.get("DATA_DIR", "data")).resolve()
        port = _int(env, "PORT", 7999, 1)
        publish_port = _int(env, "PUSHPIN_PUBLISH_PORT", 5561, 1)
        database_url = env.get("DATABASE_URL", f"sqlite://{data_dir / 'buddycloud.sqlite3'}")
        if database_url.startswith(("postgresql:", "postgres:")):
            # Nodes share the database: a key made up by one would not be the others'.
            for name in ("GRIP_SIG_KEY", "SECRET_KEY"):
                if not env.get(name):
                    raise ConfigError(
                        f"{name} must be set, and the same on every node, with PostgreSQL"
                    )
        sig_key = env.get("GRIP_SIG_KEY") or _secret(data_dir / "grip_sig_key", 48)
        if len(sig_key.encode()) < 32:
            raise ConfigError("GRIP_SIG_KEY must be at least 32 bytes")
        origin_host = env.get("ORIGIN_HOST", "127.0.0.1")
        origin_port = _int(env, "ORIGIN_PORT", 8000, 1)
        grip_urls = _list(env, "GRIP_URL", f"http://127.0.0.1:{publish_port}")
        ca_file = env.get("GRIP_CA_FILE", "")
        if ca_file and not Path(ca_file).is_file():
            raise ConfigError(f"GRIP_CA_FILE: no such file: {ca_file}")
        settings = cls(
            data_dir=data_dir,
            database_url=database_url,
            port=port,
            origin_host=origin_host,
            origin_port=origin_port,
            origins=_list(env, "ORIGINS", f"{origin_host}:{origin_port}"),
            database_pool_size=_int(env, "DATABASE_POOL_SIZE", 10, 2),
            commit_delay=_float(env, "COMMIT_DELAY_FOR_TESTS", 0.0),
            publish_port=publish_port,
            grip_urls=grip_urls,
            grip_sig_key=sig_key,
            grip_sig_iss=env.get("GRIP_SIG_ISS", "pushpin"),
            sig_keys=sig_keys(env, sig_key, grip_urls),
            secret_key=env.get("SECRET_KEY") or _secret(data_dir / "secret_key", 32),
            proxy_url=env.get("PROXY_URL", f"http://127.0.0.1:{port}"),
            hold_timeout=_int(env, "HOLD_TIMEOUT", 55, 5),
            publish_timeout=_int(env, "PUBLISH_TIMEOUT", 5, 1),
            publish_poll_seconds=_int(env, "PUBLISH_POLL_SECONDS", 1, 1),
            queue_lifespan=_int(env, "QUEUE_LIFESPAN", 600, 1),
            limits=Limits.from_env(env),
            health_publish_seconds=_int(env, "HEALTH_PUBLISH_SECONDS", 30, 1),
            idempotency_seconds=_int(env, "IDEMPOTENCY_SECONDS", 86_400, 1),
            retention_seconds=_int(env, "RETENTION_SECONDS", 7 * 86_400, 0),
            retention_events=_int(env, "RETENTION_EVENTS", 5_000_000, 0),
            retention_check_seconds=_int(env, "RETENTION_CHECK_SECONDS", 60, 1),
            auth_cache_seconds=_int(env, "AUTH_CACHE_SECONDS", 3600, 0),
            session_seconds=_int(env, "SESSION_SECONDS", 14 * 86_400, 60),
            session_cache_seconds=_int(env, "SESSION_CACHE_SECONDS", 5, 0),
            cors_origins=_list(env, "CORS_ORIGINS"),
            log_level=env.get("LOG_LEVEL", "info").lower(),
            log_format=env.get("LOG_FORMAT", "text").lower(),
            metrics_token=env.get("METRICS_TOKEN", ""),
            pushpin_metrics_port=_int(env, "PUSHPIN_METRICS_PORT", 5564, 0),
            pushpin_bin=env.get("PUSHPIN_BIN", "pushpin"),
            pushpin_config=Path(env.get("PUSHPIN_CONFIG", "pushpin/pushpin.conf")).resolve(),
            grip_ca_file=Path(ca_file).resolve() if ca_file else None,
        )
        if not settings.grip_urls:
            raise ConfigError("GRIP_URL lists no publish target")
        for origin in settings.origins:
            host, _, origin_port_text = origin.rpartition(":")
            if not host or not origin_port_text.isdigit():
                raise ConfigError(f"ORIGINS: {origin!r} is not host:port")
        if settings.log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        if settings.log_format not in LOG_FORMATS:
            raise ConfigError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
        if settings.metrics_token and len(settings.metrics_token) < 16:
            raise ConfigError("METRICS_TOKEN must be at least 16 characters")
        return settings


def sig_keys(env: dict[str, str], shared: str, grip_urls: list[str]) -> tuple[SigKey, ...]:
    """The keys a Grip-Sig may be signed with: the shared key of the run command's own Pushpin
    (GRIP_SIG_KEY, HS256), GRIP_VERIFY_KEY (a proxy's public key, ES256), and the verify-key
    of each GRIP_URL entry. Parsing the entries here also refuses a bad one at start."""
    keys = [SigKey.shared(shared, env.get("GRIP_SIG_ISS", "pushpin"))]
    verify_key, verify_iss = env.get("GRIP_VERIFY_KEY", ""), env.get("GRIP_VERIFY_ISS", "")
    if verify_key:
        if not verify_iss:
            raise ConfigError(
                "GRIP_VERIFY_ISS must be set with GRIP_VERIFY_KEY: the iss the proxy signs with "
                "(Fastly: fastly:<service id>); without it any signer with that key would do"
            )
        keys.append(_public_key(verify_key, verify_iss))
    elif verify_iss:
        raise ConfigError("GRIP_VERIFY_ISS is set but GRIP_VERIFY_KEY is not")
    fastly = []
    for url in grip_urls:
        try:
            entry = parse_grip_url(url)
        except ValueError as exc:
            raise ConfigError(f"GRIP_URL {without_credentials(url)!r}: {exc}") from None
        if entry.verify is not None:
            keys.append(entry.verify)
        if urlsplit(url).hostname == FASTLY_API_HOST:
            fastly.append(entry.label)
    if fastly and not any(key.algorithm == "ES256" for key in keys):
        raise ConfigError(
            f"GRIP_URL publishes to Fastly Fanout ({fastly[0]}) but no key checks the Grip-Sig "
            "Fastly signs with: add verify-key=<Fastly's public key> to that entry, or set "
            "GRIP_VERIFY_KEY and GRIP_VERIFY_ISS (see the README)"
        )
    return tuple(dict.fromkeys(keys))


def _public_key(value: str, issuer: str) -> SigKey:
    """GRIP_VERIFY_KEY: a PEM public key or a JWK given inline, else the path of a PEM file."""
    inline = value.lstrip().startswith(("-----BEGIN", "{"))
    where = "GRIP_VERIFY_KEY" if inline else f"GRIP_VERIFY_KEY ({value})"
    if inline:
        text = value.encode()
    else:
        try:
            text = Path(value).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read it ({exc.strerror}); give a PEM public key or its path"
            ) from None
    try:
        return SigKey.public(text, issuer)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
