"""Typed, validated settings: `config.toml` + `DICOM_AI_*` environment + command-line overrides.

Configuration is parsed once, here, into frozen pydantic models and then passed down explicitly; no module reads a
global config. Every validation error names the dotted key and the problem, so an operator can fix the file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dicom_ai.uids import AE_TITLE_MAX

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
ENV_PREFIX = "DICOM_AI_"


class ConfigError(ValueError):
    """A setting is wrong; the message names the key and what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or len(stripped) > AE_TITLE_MAX or "\\" in stripped or not stripped.isprintable():
        raise ValueError(f"AE title {value!r} must be 1-{AE_TITLE_MAX} printable characters without backslash")
    return stripped


class NodeSettings(_Section):
    """The listener: who we are and how we accept associations."""

    ae_title: str = "DICOM_AI"
    bind: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535, description="0 = any free port (tests; the bound port is logged)")
    max_associations: int = Field(16, ge=1, le=1024)
    max_pdu_size: int = Field(0, ge=0, description="0 = unlimited (fastest for large images)")
    network_timeout: float = Field(60.0, gt=0)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


class ListenerSettings(_Section):
    """How many processes receive on `node.bind`:`node.port` (dicom_ai.receive.processes)."""

    processes: int = Field(
        1, ge=1, le=64, description="listener processes sharing the listening socket: pynetdicom's DIMSE path holds "
                                    "the GIL, so concurrent associations use one core per process")


class KnownNode(_Section):
    """A peer DICOM node: allowed to send to us, and a destination for results."""

    ae_title: str
    host: str
    port: int = Field(104, ge=1, le=65535)
    check_host: bool = False
    tls: bool = False

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


class AccessSettings(_Section):
    """Who may associate: `allow-list` admits only the calling AE titles in [nodes]; `open` admits anyone."""

    mode: Literal["allow-list", "open"] = "open"
    check_called_ae: bool = True


class TlsSettings(_Section):
    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = True
    handshake_timeout: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _files_exist(self) -> "TlsSettings":
        if not self.enabled:
            return self
        required = {"certificate": self.certificate, "private_key": self.private_key}
        if self.require_client_certificate:
            required["ca_certificates"] = self.ca_certificates
        for key, path in required.items():
            if path is None:
                raise ValueError(f"{key}: required when tls.enabled = true")
            if not Path(path).is_file():
                raise ValueError(f"{key}: file {path} does not exist or is not a file")
        return self


class StorageSettings(_Section):
    """Where received data and the audit database live."""

    data_dir: Path = Path("var")
    database_url: str = Field("", description="SQLAlchemy URL; empty = sqlite file in data_dir")
    duplicate_policy: Literal["keep-first", "replace", "reject"] = "keep-first"
    sqlite_synchronous: Literal["normal", "full"] = Field(
        "normal", description="SQLite commit durability: 'normal' survives a crash of the process, 'full' power loss too"
    )
    commit_before_answer: bool = Field(
        False, description="answer a C-STORE only after the instance's row is committed (else after the fsynced file "
                           "and its spool journal line; the row follows within milliseconds); implied by "
                           "sqlite_synchronous = 'full'"
    )

    @field_validator("database_url")
    @classmethod
    def _psycopg_for_postgresql(cls, value: str) -> str:
        """A bare PostgreSQL URL means psycopg 3 (the `postgres` extra), not SQLAlchemy's default psycopg2."""
        scheme, separator, rest = value.strip().partition("://")
        if separator and scheme in ("postgresql", "postgres"):
            return f"postgresql+psycopg://{rest}"
        return value.strip()

    @property
    def records_after_answer(self) -> bool:
        """Whether instance rows are committed by the recorder after the C-STORE answer (dicom_ai.store.recorder)."""
        return not self.commit_before_answer and self.sqlite_synchronous != "full"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'dicom-ai.sqlite').resolve()}"


class QueueSettings(_Section):
    """Study stability and the durable job queue (see dicom_ai/store/queue.py)."""

    stable_after_seconds: float = Field(5.0, gt=0)
    workers: int = Field(1, ge=0, le=64)
    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_delay_seconds: float = Field(30.0, ge=0, description="wait after a failed attempt; doubles after each "
                                                              "further failure, up to retry_delay_max_seconds")
    retry_delay_max_seconds: float = Field(600.0, ge=0)
    poll_seconds: float = Field(1.0, gt=0)
    analyse_ahead_after_seconds: float = Field(
        0.5, ge=0, description="an idle worker analyses a receiving study once it has been quiet this long, before it "
                               "is stable; the job then uses those findings if the study's instances are still "
                               "exactly the ones analysed (0 turns it off)")
    batch_jobs: int = Field(1, ge=1, le=64, description="a worker thread claims up to this many due jobs at once and "
                                                        "runs each model once over the frames of all their studies "
                                                        "(1: one job at a time)")
    batch_wait_seconds: float = Field(0.0, ge=0, description="with batch_jobs > 1: how long a worker that claimed "
                                                             "fewer than batch_jobs waits for more due jobs before it "
                                                             "runs what it has (0: only what is due now)")
    handler: str = Field(
        "", description="testing/extension hook: 'package.module:callable' run for each job instead of the pipeline"
    )

    @model_validator(mode="after")
    def _retry_delay_range(self) -> "QueueSettings":
        if self.retry_delay_max_seconds < self.retry_delay_seconds:
            raise ValueError("retry_delay_max_seconds: must be at least retry_delay_seconds")
        return self

    @field_validator("handler")
    @classmethod
    def _dotted_path(cls, value: str) -> str:
        value = value.strip()
        module, _, attribute = value.partition(":")
        if value and not (module and attribute and all(p.isidentifier() for p in module.split(".") + [attribute])):
            raise ValueError(f"{value!r} must look like 'package.module:callable'")
        return value

    @model_validator(mode="after")
    def _heartbeat_shorter_than_lease(self) -> "QueueSettings":
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("heartbeat_seconds: must be shorter than lease_seconds")
        return self


class PipelineSettings(_Section):
    """The analysis pipeline (dicom_ai/pipeline/): models, the routing tree, batching."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    models_dir: Path = DEFAULT_MODELS_DIR
    enabled: bool = True
    routing_file: Path = Field(Path("routing.toml"), description="the routing tree; relative to models_dir")
    batch_size: int = Field(8, ge=1, le=1024, description="frames per forward pass of detectors and segmenters")
    warm_up: bool = Field(True, description="load every routed model and run one blank batch at start-up, in the "
                                            "background, so the first study does not pay for it")
    report_process: bool = Field(True, description="build the complete SRs in a helper process while the SEG, boxes "
                                                   "SR and key images are built and queued (machines with 2+ CPUs)")
    enable_models_below_minimum: tuple[str, ...] = Field(
        (), description="models to run although their test metric is below the manifest's minimum (they are "
                        "disabled by default; the SR then says which minimum each misses)")

    @property
    def resolved_routing_file(self) -> Path:
        return self.routing_file if self.routing_file.is_absolute() else self.models_dir / self.routing_file


class SendSettings(_Section):
    """Sending results back (dicom_ai/send/): destinations, the durable outbox's retry policy, the dispatcher."""

    to_sender: bool = True
    extra_destinations: tuple[str, ...] = ()
    max_attempts: int = Field(8, ge=1)
    backoff_initial_seconds: float = Field(5.0, gt=0)
    backoff_max_seconds: float = Field(600.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0, description="connect, association and C-STORE response timeout")
    poll_seconds: float = Field(1.0, gt=0, description="how often the idle dispatcher looks for due deliveries")
    lease_seconds: float = Field(120.0, gt=0, description="a sender holds the rows it sends this long, renewed while "
                                                          "it sends; a dead sender's rows are sent again after it")

    @model_validator(mode="after")
    def _backoff_range(self) -> "SendSettings":
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("backoff_max_seconds: must be at least backoff_initial_seconds")
        return self


class RetentionSettings(_Section):
    """How long received studies stay in the spool, and the free space the spool keeps (dicom_ai.store.retention)."""

    purge_after_hours: float = Field(
        0.0, ge=0, description="a study whose results are delivered and that received nothing for this long is "
                               "purged from the spool; 0 = keep every study (purge only with `dicom-ai purge "
                               "--older-than-hours`)")
    purge_interval_seconds: float = Field(3600.0, gt=0, description="how often `serve` purges (when enabled)")
    min_free_mib: float = Field(
        1024.0, ge=0, description="C-STOREs are refused (0xA700) while the spool's file system has less free space "
                                  "than this; 0 = only when it is full")

    @property
    def min_free_bytes(self) -> int:
        return int(self.min_free_mib * 1024 * 1024)


LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class LoggingSettings(_Section):
    """What `dicom-ai serve` logs and where (dicom_ai/logs.py)."""

    level: LogLevel = "info"
    format: Literal["text", "json"] = Field("text", description="'json': one JSON object per line")
    file: Path | None = Field(None, description="append to this file (reopened when rotated) instead of stderr")
    library_level: LogLevel = Field(
        "warning", description="the least severe record shown from libraries (pynetdicom, highdicom, pydicom, ...) "
                               "and their Python warnings")

    @field_validator("level", "library_level", "format", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("file", mode="before")
    @classmethod
    def _empty_is_stderr(cls, value: Any) -> Any:
        return None if value == "" else value


class HttpUser(_Section):
    """A dashboard / API login: an argon2 hash of the password (`dicom-ai http hash-password`) and a role."""

    password_hash: str
    role: Literal["read-only", "operator"] = "read-only"


class HttpToken(_Section):
    """A bearer token for scripts and Prometheus: an argon2 hash of the token and a role."""

    token_hash: str
    role: Literal["read-only", "operator"] = "read-only"


class HttpSettings(_Section):
    """The operating surface inside `dicom-ai serve` (dicom_ai/web/): dashboard, JSON API, /metrics, health."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 = any free port (logged)")
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    auth: Literal["users", "open"] = Field(
        "users", description="'users': log in as one of [http.users] / a [http.tokens] bearer token; 'open': "
                             "anyone may view and act (a lab), actions are audited as 'anonymous'")
    users: dict[str, HttpUser] = Field(default_factory=dict)
    tokens: dict[str, HttpToken] = Field(default_factory=dict)
    metrics_public: bool = Field(True, description="/metrics without login (Prometheus); it holds no patient data")
    session_hours: float = Field(12.0, gt=0)
    ohif_url_template: str = Field("", description="viewer link per study, e.g. "
                                                   "'https://pacs/ohif/viewer?StudyInstanceUIDs={study_uid}'")
    upload_max_mb: float = Field(64.0, gt=0, description="largest file 'analyse an image' accepts")
    ready_min_free_mb: float = Field(1024.0, ge=0, description="/readyz fails below this much free space in "
                                                                "storage.data_dir")

    @model_validator(mode="after")
    def _tls_pair(self) -> "HttpSettings":
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError("tls_certificate and tls_private_key: give both or neither")
        for key, path in (("tls_certificate", self.tls_certificate), ("tls_private_key", self.tls_private_key)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{key}: file {path} does not exist or is not a file")
        if self.ohif_url_template and "{study_uid}" not in self.ohif_url_template:
            raise ValueError("ohif_url_template: must contain {study_uid}")
        return self


class Settings(_Section):
    node: NodeSettings = NodeSettings()
    listener: ListenerSettings = ListenerSettings()
    access: AccessSettings = AccessSettings()
    nodes: dict[str, KnownNode] = Field(default_factory=dict)
    tls: TlsSettings = TlsSettings()
    storage: StorageSettings = StorageSettings()
    queue: QueueSettings = QueueSettings()
    pipeline: PipelineSettings = PipelineSettings()
    send: SendSettings = SendSettings()
    retention: RetentionSettings = RetentionSettings()
    logging: LoggingSettings = LoggingSettings()
    http: HttpSettings = HttpSettings()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Settings":
        for name in self.send.extra_destinations:
            if name not in self.nodes:
                raise ValueError(f"send.extra_destinations: {name!r} is not a node in [nodes]")
        if self.access.mode == "allow-list" and not self.nodes:
            raise ValueError("access.mode: 'allow-list' needs at least one entry in [nodes] (or use mode = 'open')")
        return self

    def node_for_calling_ae(self, calling_ae: str) -> tuple[str, KnownNode] | None:
        for name, node in self.nodes.items():
            if node.ae_title == calling_ae.strip():
                return name, node
        return None


# Short environment names for the essentials a container sets; any key can also be set as
# DICOM_AI_<SECTION>__<KEY>, e.g. DICOM_AI_QUEUE__WORKERS=2.
ESSENTIAL_ENV = {
    "AE_TITLE": ("node", "ae_title"),
    "PORT": ("node", "port"),
    "BIND": ("node", "bind"),
    "DATA_DIR": ("storage", "data_dir"),
    "DATABASE_URL": ("storage", "database_url"),
    "LOG_LEVEL": ("logging", "level"),
    "LOG_FORMAT": ("logging", "format"),
    "LOG_FILE": ("logging", "file"),
}


def _set(tree: dict[str, Any], section: str, key: str, value: Any) -> None:
    tree.setdefault(section, {})
    if not isinstance(tree[section], dict):
        raise ConfigError(f"{section}: must be a table")
    tree[section][key] = value


def _env_overrides(environ: dict[str, str]) -> list[tuple[str, str, str]]:
    found = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX):]
        if rest in ESSENTIAL_ENV:
            section, key = ESSENTIAL_ENV[rest]
        elif "__" in rest:
            section, key = (part.lower() for part in rest.split("__", 1))
        else:
            # Not a setting (e.g. a variable of the test tooling); settings use <SECTION>__<KEY>.
            continue
        found.append((section, key, value))
    return found


def _resolve_relative_paths(tree: dict[str, Any], base: Path) -> None:
    """Relative paths in a config file are relative to that file, not to the current directory."""
    for section, key in (("storage", "data_dir"), ("pipeline", "models_dir"), ("tls", "certificate"),
                         ("tls", "private_key"), ("tls", "ca_certificates"), ("logging", "file"),
                         ("http", "tls_certificate"), ("http", "tls_private_key")):
        value = tree.get(section, {}).get(key) if isinstance(tree.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            tree[section][key] = str(base / value)


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling against config.toml)"
        lines.append(f"{key}: {message}" if key else message)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(
    path: Path | None = None,
    overrides: dict[tuple[str, str], Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build settings from (in rising precedence) defaults, the TOML file, the environment and `overrides`.

    `path` defaults to `$DICOM_AI_CONFIG`; with neither, the embedded defaults are used (they equal config.toml).
    """
    environ = dict(os.environ if environ is None else environ)
    if path is None and environ.get(ENV_PREFIX + "CONFIG"):
        path = Path(environ[ENV_PREFIX + "CONFIG"])
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        _resolve_relative_paths(tree, path.resolve().parent)
    for section, key, value in _env_overrides(environ):
        _set(tree, section, key, value)
    for (section, key), value in (overrides or {}).items():
        if value is not None:
            _set(tree, section, key, value)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def check_writable_dir(directory: Path, key: str) -> None:
    """Create `directory` if needed and prove we can write there (run at start-up, not at parse time)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{key}: {directory} is not writable ({exc.strerror or exc})") from None
