"""Hearth's configuration: one YAML file, validated at start, every key overridable from the
environment as ``HEARTH_<SECTION>__<KEY>`` (e.g. ``HEARTH_SERVER__PORT=9000``).

Only this module reads the environment. `deploy/hearth.example.yaml` documents every key;
`hearth config check FILE` runs `load_settings` and prints `describe_errors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    access_log: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    callback_url: str | None = Field(
        default=None,
        description="How sites reach this gateway to stream events back (compute clusters); "
        "default http://<host>:<port>.",
    )


class StoreSettings(_Section):
    url: str = "sqlite:///./var/hearth.db"
    migrate_on_start: bool = True
    usage_batch_size: int = Field(default=500, ge=1)
    usage_flush_interval_s: float = Field(default=1.0, gt=0)
    rollup_interval_s: float = Field(default=60.0, gt=0, description="How often usage is summed by hour/day.")
    usage_retention_days: float = Field(
        default=90.0, gt=0, description="Raw usage events older than this are deleted once summed."
    )
    store_prompts: bool = Field(
        default=False, description="Reserved: prompts and completions are never stored by default."
    )


class RedisSettings(_Section):
    url: str | None = None


class StaticKey(_Section):
    """An API key given in the config (e.g. `--api-key`): by value or by its SHA-256 hex digest."""

    owner: str = "local"
    key: SecretStr | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    admin: bool = False
    models: list[str] | None = Field(default=None, description="Models the key may use; all if omitted.")

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    def model_post_init(self, context: Any, /) -> None:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of `key` or `sha256`")


class GlobusSettings(_Section):
    """The gateway as a Globus Auth resource server (https://docs.globus.org/api/auth/)."""

    client_id: str = Field(description="The gateway's confidential client id (its resource server).")
    client_secret: SecretStr = Field(description="That client's secret.")
    scope: str | None = Field(
        default=None,
        description="The scope tokens must carry; default https://auth.globus.org/scopes/<client_id>/inference.",
    )
    native_client_id: str | None = Field(
        default=None, description="The native app `hearth login` signs in with (shown at /v1/auth/config)."
    )
    auth_url: str | None = Field(default=None, description="Globus Auth base URL; default Globus's own.")
    groups_url: str | None = Field(default=None, description="Globus Groups base URL; default Globus's own.")
    timeout_s: float = Field(default=10.0, gt=0, description="One call to Globus, before 503.")
    token_cache_ttl_s: float = Field(
        default=300.0, ge=0, description="How long a verified token is trusted (never past its expiry)."
    )
    negative_cache_ttl_s: float = Field(
        default=10.0, ge=0, description="How long a refused token stays refused."
    )
    group_cache_ttl_s: float = Field(
        default=300.0, ge=0, description="How long an API key owner's group memberships are trusted."
    )
    token_encryption_key: SecretStr | None = Field(
        default=None,
        description="Fernet key sealing the Groups refresh tokens kept for API keys; default derived "
        "from client_secret.",
    )

    @property
    def required_scope(self) -> str:
        return self.scope or f"https://auth.globus.org/scopes/{self.client_id}/inference"


class PolicySettings(_Section):
    """Who may use the gateway. Groups are Globus group ids; a list of groups means "any of"."""

    required_groups: list[str] = Field(default_factory=list, description="Members of any of these may enter.")
    allowed_domains: list[str] = Field(
        default_factory=list,
        description="Identity-provider domains (uchicago.edu); the session must use one.",
    )
    required_policies: list[str] = Field(
        default_factory=list, description="Globus authentication policy ids every session must satisfy."
    )
    allowed_clients: list[str] = Field(
        default_factory=list, description="Service (client-credential) identities admitted, by client id."
    )
    admins: list[str] = Field(default_factory=list, description="Admin identities: ids or usernames.")
    admin_groups: list[str] = Field(default_factory=list, description="Members of these are admins.")
    group_names: dict[str, str] = Field(
        default_factory=dict, description="Display names of groups, for error messages and /v1/whoami."
    )


class AuthSettings(_Section):
    api_keys: list[StaticKey] = Field(default_factory=list)
    key_cache_ttl_s: float = Field(default=30.0, ge=0, description="How long a verified key is trusted.")
    negative_cache_ttl_s: float = Field(default=5.0, ge=0)
    globus: GlobusSettings | None = Field(default=None, description="Accept Globus Auth access tokens.")
    policy: PolicySettings = Field(default_factory=PolicySettings)
    audit: bool = Field(default=True, description="Record auth decisions and key and admin actions.")


class LimitSet(_Section):
    """Limits on one scope; each omitted (null) limit does not apply."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Prompt + completion tokens.")
    concurrent_requests: int | None = Field(default=None, ge=1)
    daily_tokens: int | None = Field(default=None, ge=1, description="Per UTC day.")

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in type(self).model_fields)


class LimitsSettings(_Section):
    """Quotas and rate limits: atomic across replicas through Redis, in-process without it."""

    user: LimitSet = Field(default_factory=LimitSet, description="Every user's limits, unless in `users`.")
    users: dict[str, LimitSet] = Field(
        default_factory=dict, description="Limits for one user (identity id, username or key owner)."
    )
    groups: dict[str, LimitSet] = Field(
        default_factory=dict, description="Limits shared by all members of a Globus group together."
    )
    models: dict[str, LimitSet] = Field(
        default_factory=dict, description="Limits on all traffic to one model together."
    )
    redis_failure: Literal["open", "closed"] = Field(
        default="open",
        description="When Redis cannot be reached: open admits (loudly, hearth_limiter_degraded=1); "
        "closed answers 503.",
    )
    default_max_tokens: int = Field(
        default=1024, ge=1, description="Completion tokens reserved when a request does not say max_tokens."
    )
    exempt_admins: bool = Field(default=False, description="Admins are not limited.")

    @property
    def any(self) -> bool:
        return not self.user.empty or any(
            not s.empty for group in (self.users, self.groups, self.models) for s in group.values()
        )


class StatusPageSettings(_Section):
    """The HTML status page at /status: models x clusters, their state and the last hour's traffic."""

    public: bool = Field(
        default=True,
        description="Anyone may read it (names, states and aggregate counts only); false: the API's "
        "Bearer credential is needed and the page shows what that caller may use.",
    )
    refresh_s: int = Field(default=15, ge=1, description="How often the page reloads itself, in seconds.")
    title: str = Field(default="Hearth status", min_length=1, description="The page's heading and title.")


class BatchSettings(_Section):
    """The Files and Batch APIs: storage, limits, and how batches run."""

    files_dir: str = Field(default="var/files", description="Where uploaded and result files are kept.")
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024, description="Largest upload.")
    max_lines: int = Field(default=50_000, ge=1, description="Most requests in one batch input file.")
    max_active_batches_per_user: int = Field(default=10, ge=1, description="Batches not yet finished.")
    line_concurrency: int = Field(
        default=16, ge=1, description="Lines of one batch in flight at once through hot workers."
    )
    max_concurrent_lines: int = Field(
        default=64, ge=1, description="Batch lines in flight at once on one replica, all batches together."
    )
    slurm_min_lines: int = Field(
        default=5000, ge=1, description="Batches this large run as a Slurm batch job where the cluster can."
    )
    slurm_poll_interval_s: float = Field(default=10.0, gt=0, description="How often a batch job is checked.")
    stage_chunk_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=8 * 1024 * 1024,
        description="Input staged to a site per Globus Compute task (under its payload limit).",
    )
    lease_s: float = Field(
        default=30.0, gt=0, description="How long a replica's claim on a running batch lasts unrenewed."
    )


class RelaySettings(_Section):
    connect_timeout_s: float = Field(default=5.0, gt=0)
    request_timeout_s: float = Field(default=600.0, gt=0, description="Whole non-streaming request.")
    stream_idle_timeout_s: float = Field(default=120.0, gt=0, description="Longest gap between events.")
    max_connections: int = Field(default=1000, ge=1)
    max_attempts: int = Field(default=3, ge=1, description="Upstreams tried before giving up.")
    failure_cooldown_s: float = Field(default=5.0, ge=0)
    discovery_interval_s: float = Field(default=30.0, gt=0)

    cold_start_wait_s: float = Field(
        default=60.0, ge=0, description="How long a non-streaming request waits for a cold model to start."
    )
    cold_start_stream_wait_s: float = Field(
        default=1800.0, ge=0, description="How long a streaming request is held (with keep-alives) for one."
    )
    keepalive_s: float = Field(default=5.0, gt=0, description="Between SSE keep-alive comments while held.")
    cold_start_estimate_s: float = Field(
        default=120.0,
        ge=0,
        description="Assumed time from a worker job starting to its model answering, until starts "
        "have been seen (then their moving average is used); for the estimated wait in /v1/status.",
    )
    load_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the engine metrics (running, waiting, KV cache) of `direct` upstreams "
        "are read for routing; compute clusters report them with their status.",
    )
    stall_after_s: float = Field(
        default=30.0,
        gt=0,
        description="An engine with requests running whose generated-token counter has not moved "
        "for this long is treated as failing (breaker open) until it moves again.",
    )
    prefix_affinity: bool = Field(
        default=True,
        description="Send requests that start alike (same system prompt and first message) to the "
        "same worker within a cluster, when it is not busier than its peers, so prefix caches are reused.",
    )


class SchedulerSettings(_Section):
    """The hot-node scheduler: how many workers each model runs on each cluster that may start
    them (`compute.start_workers`). One gateway replica decides (a Redis lock; alone without Redis)."""

    enabled: bool = Field(default=True, description="Scale workers on clusters with compute.start_workers.")
    interval_s: float = Field(default=10.0, gt=0, description="How often the leader decides.")
    demand_halflife_s: float = Field(
        default=60.0,
        gt=0,
        description="Half-life of the moving average of demand (requests in flight and waiting).",
    )
    renew_before_s: float = Field(
        default=600.0,
        ge=0,
        description="Start a replacement this long before a worker's walltime ends, then drain the old one.",
    )
    leader_ttl_s: float = Field(
        default=30.0,
        gt=0,
        description="How long the leader's lock lasts unrenewed (another replica takes over).",
    )

    def model_post_init(self, context: Any, /) -> None:
        if self.leader_ttl_s <= self.interval_s:
            raise ValueError(
                "scheduler.leader_ttl_s must be longer than scheduler.interval_s "
                "(the leader renews its lock once per interval)"
            )


class TracingSettings(_Section):
    """OpenTelemetry tracing of inference requests (docs/admin/gateway.md#tracing)."""

    enabled: bool = Field(default=False, description="Trace inference requests and pass the context on.")
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL of a collector, e.g. http://collector:4318/v1/traces.",
    )
    service_name: str = Field(default="hearth-gateway", min_length=1, description="Resource service.name.")
    sample_ratio: float = Field(
        default=1.0, ge=0, le=1, description="Share of new traces kept; a client's sampled flag is obeyed."
    )
    console: bool = Field(default=False, description="Also write each span to the log (for trying it out).")

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. http://collector:4318/v1/traces")
        return v


class UpstreamSettings(_Section):
    url: AnyHttpUrl = Field(description="Base URL of an OpenAI-compatible server, ending in /v1.")
    name: str | None = None
    api_key: SecretStr | None = None
    models: list[str] | None = Field(default=None, description="Omit to discover from GET /v1/models.")

    @field_validator("url")
    @classmethod
    def _ends_in_v1(cls, v: AnyHttpUrl) -> AnyHttpUrl:
        if not str(v).rstrip("/").endswith("/v1"):
            raise ValueError("must end in /v1, e.g. http://host:8000/v1")
        return v

    @property
    def base_url(self) -> str:
        return str(self.url).rstrip("/")


class ComputeSettings(_Section):
    """How a `compute` cluster's Globus Compute tasks run."""

    mode: Literal["local", "cloud"] = Field(
        default="local",
        description="local: Globus Compute's engine in the gateway process (single-site mode); "
        "cloud: a registered endpoint through the Globus Compute web service.",
    )
    endpoint_id: str | None = Field(default=None, description="The endpoint's UUID (cloud mode).")
    function_ids: dict[str, str] = Field(
        default_factory=dict,
        description="Registered function ids by name (cloud mode): infer, infer_stream, list_models.",
    )
    provider: Literal["local", "slurm"] = Field(default="local", description="Where local-mode workers run.")
    partition: str | None = Field(default=None, description="Slurm partition for the slurm provider.")
    walltime: str = Field(default="04:00:00", description="Walltime of the slurm provider's block job.")
    worker_init: str = Field(default="", description="Shell lines run before the worker pool starts.")
    max_workers: int = Field(default=8, ge=1, description="Concurrent tasks (streams count) per node.")
    run_dir: str = Field(default="var/compute", description="The engine's working directory.")
    discover_workers: bool = Field(
        default=False,
        description="Ask the site (its `status` function) for READY workers, in addition to `upstreams`.",
    )
    site_config: str | None = Field(
        default=None,
        description="The site.yaml the site functions read, if not $HEARTH_SITE_CONFIG at the endpoint.",
    )
    start_workers: bool = Field(
        default=False,
        description="Cold start and scaling: when a model the site lists (discover_workers) is asked for "
        "and no worker is READY, start one there (the `start_worker` site function); the scheduler "
        "starts and drains workers here (`stop_worker`).",
    )

    def model_post_init(self, context: Any, /) -> None:
        if self.mode == "cloud":
            needed = (
                {"infer", "infer_stream", "list_models"}
                | ({"status"} if self.discover_workers else set())
                | ({"start_worker", "stop_worker"} if self.start_workers else set())
            )
            missing = needed - set(self.function_ids)
            if not self.endpoint_id or missing:
                raise ValueError(
                    f"cloud mode needs endpoint_id and function_ids for {', '.join(sorted(needed))}"
                    " (see `hearth endpoint register-functions`)"
                )


_BATCH_FUNCTIONS = ("batch_stage", "batch_submit", "batch_status", "batch_collect", "batch_cancel")


class ClusterSettings(_Section):
    relay: Literal["direct", "compute"] = Field(
        default="direct",
        description="direct: HTTP from the gateway to the workers; compute: through Globus Compute.",
    )
    upstreams: list[UpstreamSettings] = Field(default_factory=list)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    required_groups: list[str] = Field(
        default_factory=list, description="Only members of any of these Globus groups may use this cluster."
    )
    batch_jobs: bool = Field(
        default=False,
        description="Large batches may run here as Slurm batch jobs (a compute cluster whose site "
        "has batch set up).",
    )
    shared_dir: str | None = Field(
        default=None,
        description="A directory the gateway and the site both see; batch input and output go "
        "through it instead of through Globus Compute tasks.",
    )
    priority: int = Field(
        default=0, description="Where to start workers when several clusters could: higher first."
    )

    def model_post_init(self, context: Any, /) -> None:
        if self.batch_jobs:
            if self.relay != "compute":
                raise ValueError(
                    "batch_jobs needs relay: compute (batch jobs are submitted through the site)"
                )
            missing = [f for f in _BATCH_FUNCTIONS if f not in self.compute.function_ids]
            if self.compute.mode == "cloud" and missing:
                raise ValueError(
                    f"batch_jobs in cloud mode needs compute.function_ids for {', '.join(missing)} "
                    "(see `hearth endpoint register-functions`)"
                )


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class PrewarmWindow(_Section):
    """A time when a model is kept hot whatever the demand (e.g. weekdays 08:00-18:00)."""

    days: list[Weekday] = Field(
        default_factory=lambda: list(_DAYS), description="Days it applies; all if omitted."
    )
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM, inclusive.")
    end: str = Field(
        pattern=r"^([01][0-9]|2[0-4]):[0-5][0-9]$", description="HH:MM, exclusive; may be past midnight."
    )
    replicas: int = Field(
        default=1, ge=1, description="Workers kept hot during the window, all clusters together."
    )
    timezone: str = Field(default="UTC", description="IANA zone the times are in, e.g. America/Chicago.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class ModelSettings(_Section):
    clusters: list[str] | None = Field(default=None, description="Clusters it may run on; all if omitted.")
    served_name: str | None = Field(default=None, description="The engine's name for it, if different.")
    required_groups: list[str] = Field(
        default_factory=list, description="Only members of any of these Globus groups may use this model."
    )
    min_hot: dict[str, int] = Field(
        default_factory=dict, description="Workers always kept running, by cluster (compute.start_workers)."
    )
    max_replicas: int = Field(default=1, ge=1, description="Most workers at once, all clusters together.")
    idle_s: float = Field(
        default=900.0, ge=0, description="Workers above min_hot are drained after this long without need."
    )
    target_load: float = Field(
        default=8.0,
        gt=0,
        description="Requests (in flight and waiting) per worker before another is started.",
    )
    walltime: str | None = Field(
        default=None,
        pattern=r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$",
        description="Walltime of its worker jobs ([D-]HH:MM:SS), at most the site's; the site's if omitted.",
    )
    prewarm: list[PrewarmWindow] = Field(default_factory=list, description="Times it is kept hot anyway.")

    def model_post_init(self, context: Any, /) -> None:
        for cluster, count in self.min_hot.items():
            if count < 0:
                raise ValueError(f"min_hot.{cluster} must be >= 0")
        if sum(self.min_hot.values()) > self.max_replicas:
            raise ValueError("min_hot adds up to more than max_replicas")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HEARTH_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    status_page: StatusPageSettings = Field(default_factory=StatusPageSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    clusters: dict[str, ClusterSettings] = Field(default_factory=dict)
    models: dict[str, ModelSettings] = Field(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        policy = self.auth.policy
        uses_groups = any(m.required_groups for m in self.models.values()) or any(
            c.required_groups for c in self.clusters.values()
        )
        if self.auth.globus is None and (
            uses_groups or any(getattr(policy, f) for f in type(policy).model_fields if f != "group_names")
        ):
            raise ValueError(
                "auth.policy and required_groups need auth.globus (Globus Auth) to be configured"
            )
        for name, model in self.models.items():
            for cluster in model.clusters or ():
                if cluster not in self.clusters:
                    raise ValueError(f"models.{name}.clusters names unknown cluster {cluster!r}")
            for cluster in model.min_hot:
                if cluster not in self.clusters:
                    raise ValueError(f"models.{name}.min_hot names unknown cluster {cluster!r}")
                if model.clusters is not None and cluster not in model.clusters:
                    raise ValueError(f"models.{name}.min_hot names cluster {cluster!r}, not in its clusters")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments (CLI flags) over environment over the file; no .env files, no secrets dir.
        return (init_settings, env_settings, _FileSource(settings_cls, cls._file_data))

    _file_data: ClassVar[dict[str, Any]] = {}


class _FileSource(PydanticBaseSettingsSource):
    """The parsed YAML file as a settings source (lowest priority above defaults)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class ConfigError(Exception):
    """The config file cannot be used; `problems` lists (key, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {key}: {reason}" for key, reason in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `path` (YAML), the environment over it, and `overrides` (CLI flags) on top.

    Overrides replace whole sections' keys they name: pass nested dicts, e.g.
    ``server={"port": 9000}``.
    """
    data: dict[str, Any] = {}
    source = str(path) if path else "the environment"
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(source, [("(file)", exc.strerror or str(exc))]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(source, [("(file)", f"not valid YAML: {exc}")]) from exc
        if not isinstance(loaded, dict):
            raise ConfigError(source, [("(file)", "the top level must be a mapping of sections")])
        data = loaded
    loaded_cls: type[Settings] = type("LoadedSettings", (Settings,), {"_file_data": data})
    try:
        return loaded_cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(source, describe_errors(exc)) from None
    except ValueError as exc:
        raise ConfigError(source, [("(config)", str(exc))]) from None


def describe_errors(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        reason = err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        out.append((key, reason))
    return out


__all__ = [
    "AuthSettings",
    "BatchSettings",
    "ClusterSettings",
    "ConfigError",
    "GlobusSettings",
    "LimitSet",
    "LimitsSettings",
    "ModelSettings",
    "PolicySettings",
    "PrewarmWindow",
    "RedisSettings",
    "RelaySettings",
    "SchedulerSettings",
    "ServerSettings",
    "Settings",
    "StaticKey",
    "StatusPageSettings",
    "StoreSettings",
    "TracingSettings",
    "UpstreamSettings",
    "load_settings",
]
