"""Which limits apply to a request, as charges against counters. No I/O here.

A request is charged against up to three scopes: its user (``limits.users.<who>`` or the
default ``limits.user``), each of the user's groups that has limits (the members share them),
and its model (everyone's traffic to it). Each limit of a scope becomes one charge:

- requests per minute and tokens per minute: counters in fixed one-minute windows;
- daily tokens: a counter per UTC day;
- concurrent requests: a set of leases (one per request in flight), each with an expiry so a
  replica that dies does not hold its leases for ever.

Tokens are reserved before the request (prompt estimate + ``max_tokens``) and settled with the
real count after it (:meth:`gateway.limits.limiter.Limiter.settle`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.auth.principal import Principal
from gateway.config import LimitSet, LimitsSettings

__all__ = ["Charge", "LimitKind", "charges_for", "estimate_tokens", "scopes_for"]

LimitKind = Literal["requests", "tokens", "daily_tokens", "concurrent"]
_WINDOW_S = 60
_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class Charge:
    key: str  # the counter (or lease set) in the store
    kind: LimitKind
    scope: str  # "user:<id>", "group:<id>", "model:<name>"
    limit: int
    cost: int
    reset_at: float  # unix seconds when the counter starts afresh (leases: now + 1)
    ttl_ms: int  # how long the store keeps the counter (leases: how long one lease lives)

    @property
    def lease(self) -> bool:
        return self.kind == "concurrent"

    @property
    def settles(self) -> bool:
        """Whether the real token count replaces the reserved estimate afterwards."""
        return self.kind in ("tokens", "daily_tokens")


def scopes_for(settings: LimitsSettings, principal: Principal, model: str) -> list[tuple[str, LimitSet]]:
    if settings.exempt_admins and principal.is_admin:
        return []
    user = settings.users.get(principal.user) or (
        settings.users.get(principal.username) if principal.username else None
    )
    scopes = [(f"user:{principal.user}", user or settings.user)]
    scopes += [(f"group:{g}", settings.groups[g]) for g in sorted(principal.groups) if g in settings.groups]
    if model in settings.models:
        scopes.append((f"model:{model}", settings.models[model]))
    return [(scope, limits) for scope, limits in scopes if not limits.empty]


def charges_for(
    scopes: list[tuple[str, LimitSet]], tokens: int, now: float, *, prefix: str, lease_ttl_s: float
) -> list[Charge]:
    window = int(now // _WINDOW_S)
    window_end = (window + 1) * _WINDOW_S
    day = int(now // _DAY_S)
    day_end = (day + 1) * _DAY_S
    out = []
    for scope, limits in scopes:
        base = f"{prefix}{scope}"
        if limits.requests_per_minute is not None:
            out.append(Charge(
                f"{base}:rpm:{window}", "requests", scope, limits.requests_per_minute, 1, window_end,
                _ttl_ms(window_end, now),
            ))  # fmt: skip
        if limits.tokens_per_minute is not None:
            out.append(Charge(
                f"{base}:tpm:{window}", "tokens", scope, limits.tokens_per_minute, tokens, window_end,
                _ttl_ms(window_end, now),
            ))  # fmt: skip
        if limits.daily_tokens is not None:
            out.append(Charge(
                f"{base}:day:{day}", "daily_tokens", scope, limits.daily_tokens, tokens, day_end,
                _ttl_ms(day_end, now),
            ))  # fmt: skip
        if limits.concurrent_requests is not None:
            out.append(Charge(
                f"{base}:conc", "concurrent", scope, limits.concurrent_requests, 1, now + 1,
                int(lease_ttl_s * 1000),
            ))  # fmt: skip
    return out


def _ttl_ms(until: float, now: float) -> int:
    """Keep a window's counter a minute past its end, for late settlements."""
    return int((until - now + _WINDOW_S) * 1000)


def estimate_tokens(
    payload: dict[str, object], body_bytes: int, endpoint: str, default_max_tokens: int
) -> int:
    """Tokens to reserve before a request: about one per four bytes of the body for the prompt,
    plus the completion it may produce (``max_completion_tokens``/``max_tokens``, or the default)."""
    prompt = max(body_bytes // 4, 1)
    if endpoint == "embeddings":
        return prompt
    asked = payload.get("max_completion_tokens") or payload.get("max_tokens")
    completion = asked if isinstance(asked, int) and asked > 0 else default_max_tokens
    n = payload.get("n")
    return prompt + completion * (n if isinstance(n, int) and n > 0 else 1)
