"""Who is calling: the identity every authenticated request carries."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    user: str  # a Globus identity id, or the owner name of an API key
    key_id: str | None = None  # the API key used, if any (never the key itself)
    groups: frozenset[str] = field(default_factory=frozenset)
    is_admin: bool = False
    models: frozenset[str] | None = None  # None: every model the catalogue serves

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models
