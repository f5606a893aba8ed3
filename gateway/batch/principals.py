"""A batch runs as its owner: what the owner may use is kept with the batch as JSON.

Taken when the batch is created (the owner's credentials, groups and limits as they were then)
and used by whichever replica runs the batch, long after the request that created it.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.auth.principal import Principal

__all__ = ["dump_principal", "load_principal"]


def dump_principal(p: Principal) -> str:
    return orjson.dumps({
        "user": p.user,
        "key_id": p.key_id,
        "auth": p.auth,
        "username": p.username,
        "groups": sorted(p.groups),
        "group_names": dict(p.group_names),
        "is_admin": p.is_admin,
        "models": None if p.models is None else sorted(p.models),
        "blocked_models": dict(p.blocked_models),
        "blocked_clusters": dict(p.blocked_clusters),
    }).decode()  # fmt: skip


def load_principal(text: str) -> Principal:
    d: dict[str, Any] = orjson.loads(text)
    return Principal(
        user=d["user"],
        key_id=d.get("key_id"),
        auth=d.get("auth", "api_key"),
        username=d.get("username"),
        groups=frozenset(d.get("groups") or ()),
        group_names=d.get("group_names") or {},
        is_admin=bool(d.get("is_admin")),
        models=None if d.get("models") is None else frozenset(d["models"]),
        blocked_models=d.get("blocked_models") or {},
        blocked_clusters=d.get("blocked_clusters") or {},
    )
