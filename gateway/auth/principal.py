"""Who is calling: the identity every authenticated request carries, and what it may use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

AuthMethod = Literal["static_key", "api_key", "globus"]


@dataclass(frozen=True, slots=True)
class LinkedIdentity:
    id: str
    username: str
    name: str | None = None
    email: str | None = None
    identity_provider: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    user: str  # a Globus identity id, or the owner name of an API key
    key_id: str | None = None  # the API key used, if any (never the key itself)
    groups: frozenset[str] = field(default_factory=frozenset)  # the Globus groups the gateway cares about
    is_admin: bool = False
    models: frozenset[str] | None = None  # None: every model the catalogue serves
    auth: AuthMethod = "static_key"
    username: str | None = None
    name: str | None = None
    email: str | None = None
    identity_provider: str | None = None
    linked: tuple[LinkedIdentity, ...] = ()
    group_names: Mapping[str, str] = field(default_factory=dict)  # id -> display name, for the groups above
    # model -> why not (a sentence a person can act on)
    blocked_models: Mapping[str, str] = field(default_factory=dict)
    blocked_clusters: Mapping[str, str] = field(default_factory=dict)  # cluster -> why not

    def may_use(self, model: str) -> bool:
        return (self.models is None or model in self.models) and model not in self.blocked_models

    def refusal(self, model: str) -> str | None:
        """Why this caller may not use ``model``, or None if they may."""
        if self.models is not None and model not in self.models:
            return f"Your credentials may not use the model `{model}`."
        return self.blocked_models.get(model)

    def may_use_cluster(self, cluster: str) -> bool:
        return cluster not in self.blocked_clusters

    def cluster_refusal(self, cluster: str) -> str | None:
        return self.blocked_clusters.get(cluster)

    @property
    def globus_identity(self) -> bool:
        """True when ``user`` is a Globus identity id (a token, or a key a Globus user made)."""
        return self.auth == "globus" or self.username is not None
