"""The tenant policy: what one `policies/<tenant>.yaml` may say, with safe defaults.

`policies/default.yaml` is deep-merged under every tenant file before validation, so a tenant file
only states what differs. Every field is documented for operators in `policies/README.md`; the
JSON Schema in `policies/policy.schema.json` is generated from these models
(`memento-proxy policy schema`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from storage.records import MemoryKind

KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

MemoryMode = Literal["off", "read", "write", "full"]


def _yaml_off(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads an unquoted `off` as the boolean false; where a field's values
    include 'off', false can only mean that."""
    return "off" if value is False else value


# For every field whose values include 'off': `mode: off` in a policy file means 'off'.
YamlOff = BeforeValidator(_yaml_off)


class Strict(BaseModel):
    """Unknown keys are errors, so a typo in a policy file is reported instead of ignored; so
    are YAML's `.nan` and `.inf` (no bound can hold them: every comparison with NaN is false)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_section(cls, data: Any) -> Any:
        return {} if data is None else data  # `memory:` with nothing (or comments) under it


# Headers that carry a provider key: api_key (env:NAME) is where one is named.
CREDENTIAL_HEADERS = {"authorization", "api-key", "x-api-key", "proxy-authorization"}

# Client APIs other than chat completions that an upstream may serve natively.
NativeApi = Literal["responses", "messages"]


class ModelRoute(Strict):
    """One model alias a tenant may call, and where it really goes."""

    model: str = Field(description="Any litellm model string, e.g. openai/gpt-4o-mini, echo.")
    api_key: str | None = Field(
        default=None, description="Provider key reference: env:NAME reads the server environment."
    )
    api_base: str | None = None
    api_version: str | None = None
    passthrough: bool | None = Field(
        default=None,
        description="Relay OpenAI-compatible upstreams byte for byte; None decides from the model.",
    )
    native_apis: list[NativeApi] | None = Field(
        default=None,
        description=(
            "Besides chat completions, the client APIs the upstream serves itself at api_base "
            "(relayed as they come); the others are translated through litellm. None: "
            "responses for OpenAI itself, none otherwise."
        ),
    )
    timeout_s: float = Field(default=600.0, gt=0)
    context_window: int | None = Field(
        default=None, gt=0, description="Overrides litellm's model info for the token budget."
    )
    extra_headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("api_base")
    @classmethod
    def _base_is_a_url(cls, value: str | None) -> str | None:
        if value is not None:
            url = urlsplit(value)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(
                    f"'{value}' is not an http:// or https:// URL, so no call could reach it; "
                    "write the upstream's base URL, e.g. http://127.0.0.1:8000/v1"
                )
        return value

    @field_validator("extra_headers")
    @classmethod
    def _no_credentials(cls, headers: dict[str, str]) -> dict[str, str]:
        if CREDENTIAL_HEADERS & {name.lower() for name in headers}:
            raise ValueError(
                "a provider key is never written into a policy file, headers included; "
                "name its variable in api_key: env:VARIABLE_NAME instead"
            )
        return headers

    @field_validator("api_key")
    @classmethod
    def _key_is_a_reference(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("env:"):
            raise ValueError(
                "api_key must reference the server environment as env:VARIABLE_NAME; "
                "never write a provider key into a policy file"
            )
        return value


class Limits(Strict):
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)


class RetrievalSettings(Strict):
    k1: int = Field(
        default=30, ge=1, le=500, description="Candidates per retriever (BM25, vector)."
    )
    rrf_k: int = Field(
        default=5,
        ge=1,
        description="Reciprocal rank fusion constant: rel = Σ w/(rrf_k + rank). Smaller trusts "
        "the top ranks more (5 measured best on LoCoMo with the local embedder; 60 is flatter).",
    )
    bm25_weight: float = Field(default=1.5, ge=0, description="Weight of BM25 ranks in the fusion.")
    vector_weight: float = Field(
        default=1.0, ge=0, description="Weight of vector ranks in the fusion."
    )
    k2_cases: int = Field(default=4, ge=0, le=20)
    tau_trust: float = Field(default=0.5, ge=0, le=1)
    delta_sim: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Minimum cosine for cases; None calibrates per embedder.",
    )
    q_min: float = Field(default=-0.6, ge=-1, le=1)
    epsilon: float = Field(default=0.0, ge=0, le=1)
    dedup_cos: float = Field(default=0.92, gt=0, le=1)
    deadline_ms: int = Field(
        default=250,
        ge=1,
        description="Retrieval deadline on the hot path, from when the call's retrieval starts; "
        "past it the call goes on without memory (`x-memento-memory-skipped: deadline`).",
    )
    queue_ms: int = Field(
        default=1000,
        ge=1,
        le=60_000,
        description="On a busy proxy, how long a call may wait for one of the process's "
        "retrieval slots (MEMENTO_RETRIEVAL_SLOTS) before retrieval starts; past it the call "
        "goes on without memory (`x-memento-memory-skipped: busy`).",
    )
    wait_for_writes_ms: int = Field(
        default=2000,
        ge=0,
        le=30_000,
        description="Before retrieval, wait up to this long for the user's earlier exchanges "
        "to be learned (read your writes); 0 does not wait.",
    )
    query_context_turns: int = Field(default=2, ge=0, le=20)
    second_round_seeds: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Multi-hop: the best this many hits of a first search seed a second one "
        "(their names and numbers added to the query, their mean vector as its vector), fused "
        "into relevance by rank; 0 is one round. Costs a second search on the hot path.",
    )
    second_round_weight: float = Field(
        default=0.5, ge=0, description="Weight of the second round's ranks in the fusion."
    )


def _default_lambda() -> dict[MemoryKind, float]:
    return {"case": 0.5, "fact": 0.15, "preference": 0.15, "lesson": 0.0}


def _over_defaults(defaults: dict[Any, float]) -> BeforeValidator:
    """A per-kind or per-source map states only what differs: the keys it leaves out keep
    their defaults (as a tenant file's mappings merge over default.yaml), rather than
    silently becoming 0."""
    return BeforeValidator(
        lambda value: {**defaults, **value} if isinstance(value, dict) else value
    )


def _all_modes() -> list[MemoryMode]:
    return ["off", "read", "write", "full"]


class ScoringSettings(Strict):
    lambda_: Annotated[dict[MemoryKind, float], _over_defaults(_default_lambda())] = Field(
        default_factory=_default_lambda,
        alias="lambda",
    )
    beta_recency: float = Field(default=0.2, ge=0)
    recency_days: float = Field(default=30.0, gt=0)
    eta_trust: float = Field(default=0.5, ge=0)
    z_clip: float = Field(default=3.0, gt=0)

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True
    )


class BudgetSettings(Strict):
    max_tokens: int = Field(default=1200, ge=0, description="Tokens the memory block may use.")
    fact_share: float = Field(default=0.6, ge=0, le=1)
    case_share: float = Field(default=0.3, ge=0, le=1)
    lesson_share: float = Field(default=0.1, ge=0, le=1)
    reserve_output_tokens: int = Field(
        default=1024,
        ge=0,
        description="Kept free for the answer when the caller sets no max_tokens.",
    )


class ProvenanceCredit(Strict):
    """Credit assignment along provenance: a rewarded memory passes part of its reward to the
    memories it was derived from (those injected into the call that wrote it)."""

    enabled: bool = False
    gamma_lambda: float = Field(
        default=0.5, gt=0, le=1, description="Share of the update kept per provenance step."
    )
    max_depth: int = Field(default=2, ge=1, le=8, description="Provenance steps credited.")


class FeedbackSettings(Strict):
    alpha_case: float = Field(default=0.3, gt=0, le=1)
    alpha_fact: float = Field(default=0.1, gt=0, le=1)
    q0: float = Field(default=0.0, ge=-1, le=1)
    provenance_credit: ProvenanceCredit = Field(default_factory=ProvenanceCredit)


class ExtractionSettings(Strict):
    model: str | None = Field(
        default=None,
        description="Model alias (from models) or litellm string for LLM extraction; "
        "None uses the deterministic first-person extractor.",
    )
    cases: bool = True
    max_candidates: int = Field(default=20, ge=0)


class ConsolidationSettings(Strict):
    llm: bool = False
    model: str | None = None
    dup_cos: float = Field(default=0.95, gt=0, le=1)
    same_topic_cos: float = Field(default=0.75, gt=0, le=1)

    @model_validator(mode="after")
    def _llm_names_its_model(self) -> ConsolidationSettings:
        if self.llm and self.model is None:
            raise ValueError(
                "llm is true but no model is named, so no LLM would ever be asked; set "
                "memory.consolidation.model (one of models' aliases or a litellm string), "
                "or llm: false"
            )
        return self


class WriteQueueSettings(Strict):
    max_depth: int | None = Field(
        default=None,
        ge=1,
        description="With this many of the tenant's exchanges waiting to be learned, further "
        "ones are shed (counted and traced, not learned) until the queue is below it again.",
    )
    max_age_s: float | None = Field(
        default=None,
        gt=0,
        description="Shed new exchanges while the tenant's oldest waiting one is older than this.",
    )


class MemoryPolicy(Strict):
    enabled: bool = True
    default_mode: Annotated[MemoryMode, YamlOff] = "full"
    allowed_modes: list[Annotated[MemoryMode, YamlOff]] = Field(default_factory=_all_modes)
    anonymous: Annotated[Literal["off", "tenant"], YamlOff] = Field(
        default="off",
        description=(
            "Requests without a user id: off = pass-through, tenant = tenant-shared memory."
        ),
    )
    shared_kinds: list[MemoryKind] = Field(
        default_factory=list, description="Kinds retrieved tenant-wide in addition to the user's."
    )
    fail_closed: bool = False
    ttl_days: float | None = Field(default=None, gt=0, description="Expiry for new memories.")
    workers: int = Field(
        default=2,
        ge=1,
        le=32,
        description="Most of this tenant's exchanges learned at once by one process's write "
        "pool (MEMENTO_MEMORY_WORKERS workers shared by all tenants).",
    )
    write_queue: WriteQueueSettings = Field(default_factory=WriteQueueSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    extraction: ExtractionSettings = Field(default_factory=ExtractionSettings)
    consolidation: ConsolidationSettings = Field(default_factory=ConsolidationSettings)


class DBSCANSettings(Strict):
    eps: float = Field(default=0.5, gt=0)
    min_samples: int = Field(default=2, ge=1)


class SessionBurst(Strict):
    cos: float = Field(default=0.9, gt=0, le=1)
    count: int = Field(default=3, ge=2, description="A burst is several writes: one is not.")


class RateLimits(Strict):
    per_session: int = Field(default=20, ge=0)
    per_day: int = Field(default=100, ge=0)


# The sources a memory's prior trust is set for; any other (system, guard, admin) has prior 0.
TRUSTED_SOURCES = ("import", "user", "assistant", "tool")


def _trusted_source(name: str) -> str:
    if name not in TRUSTED_SOURCES:
        raise ValueError(
            f"'{name}' is not a source; base_trust is set for {', '.join(TRUSTED_SOURCES)}"
        )
    return name


def _default_base_trust() -> dict[str, float]:
    return {"import": 0.9, "user": 0.8, "assistant": 0.6, "tool": 0.3}


class SanitizerPolicy(Strict):
    base_trust: Annotated[
        dict[Annotated[str, AfterValidator(_trusted_source)], Annotated[float, Field(ge=0, le=1)]],
        _over_defaults(_default_base_trust()),
    ] = Field(default_factory=_default_base_trust)
    w_heur: float = Field(default=0.6, ge=0)
    active_min: float = Field(default=0.6, ge=0, le=1)
    quarantine_min: float = Field(default=0.3, ge=0, le=1)
    pii: Literal["redact", "reject", "allow"] = "redact"
    judge_model: str | None = None
    max_fact_chars: int = Field(default=400, ge=1)
    dup_cos: float = Field(default=0.95, gt=0, le=1)
    topic_cos: float = Field(
        default=0.75, gt=0, le=1, description="Cosine at which two facts are on the same subject."
    )
    case_key_cos: float = Field(default=0.85, gt=0, le=1)
    lesson_cos_write: float = Field(default=0.85, gt=0, le=1)
    lesson_cos_read: float = Field(default=0.8, gt=0, le=1)
    dbscan: DBSCANSettings = Field(default_factory=DBSCANSettings)
    session_burst: SessionBurst = Field(default_factory=SessionBurst)
    rate: RateLimits = Field(default_factory=RateLimits)
    quarantine_ttl_days: float = Field(default=30.0, gt=0)
    shared_min_trust: float = Field(default=0.8, ge=0, le=1)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> SanitizerPolicy:
        if self.quarantine_min > self.active_min:
            raise ValueError("quarantine_min must not exceed active_min")
        return self


class GuardPolicy(Strict):
    """The read-time guard: retrieved memories that resemble an attack lesson are dropped."""

    num_lessons: int = Field(
        default=4,
        ge=0,
        description="Nearest lessons each retrieved memory is compared with; 0 turns the "
        "read-time guard off.",
    )


class TracingPolicy(Strict):
    content: Annotated[Literal["off", "redacted", "full"], YamlOff] = "off"
    retention_days: float = Field(default=7.0, gt=0)
    max_traces: int = Field(default=100_000, ge=100)


class LoggingPolicy(Strict):
    log_content: bool = Field(
        default=False,
        description="Log memory text in the write path's debug lines; off keeps logs to ids, "
        "kinds and counts.",
    )


def _key_hash(key: str) -> str:
    if not KEY_HASH.match(key):
        raise ValueError(
            "each key must be sha256:<64 lowercase hex digits>; "
            "`memento-proxy keys hash <key>` prints it"
        )
    return key


class Policy(Strict):
    """A tenant's whole policy, after `default.yaml` has been merged under its file."""

    tenant: str
    keys: list[Annotated[str, AfterValidator(_key_hash)]] = Field(default_factory=list)
    models: dict[str, ModelRoute] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    memory: MemoryPolicy = Field(default_factory=MemoryPolicy)
    sanitizer: SanitizerPolicy = Field(default_factory=SanitizerPolicy)
    guard: GuardPolicy = Field(default_factory=GuardPolicy)
    tracing: TracingPolicy = Field(default_factory=TracingPolicy)
    logging: LoggingPolicy = Field(default_factory=LoggingPolicy)

    @field_validator("tenant")
    @classmethod
    def _tenant_id(cls, value: str) -> str:
        if not TENANT_ID.match(value):
            raise ValueError(
                "tenant must be lowercase letters, digits, '-' or '_' (at most 63 characters)"
            )
        return value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge `override` onto `base`: mappings merge key by key, anything else replaces; an
    empty section (`memory:` with nothing under it) changes nothing."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(merged.get(key), dict) and (value is None or isinstance(value, dict)):
            merged[key] = deep_merge(merged[key], value or {})
        else:
            merged[key] = value
    return merged
