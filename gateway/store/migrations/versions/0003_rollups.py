"""Usage rollups (hourly and daily), their read position, and users' groups.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Written by hand to match ``gateway/store/models.py``; ``tests/gateway/store/test_migrations.py``
checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("cluster", sa.String(128), nullable=False),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_rollups")),
        sa.UniqueConstraint(
            "period",
            "period_start",
            "user",
            "model",
            "cluster",
            "group_id",
            name=op.f("uq_usage_rollups_period"),
        ),
    )
    op.create_index(op.f("ix_usage_rollups_period_start"), "usage_rollups", ["period_start"])
    op.create_index(op.f("ix_usage_rollups_user"), "usage_rollups", ["user"])
    op.create_table(
        "rollup_state",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("done_id", sa.BigInteger(), nullable=False),
        sa.Column("seen_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_rollup_state")),
    )
    op.create_table(
        "user_groups",
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user", "group_id", name=op.f("pk_user_groups")),
    )


def downgrade() -> None:
    op.drop_table("user_groups")
    op.drop_table("rollup_state")
    op.drop_index(op.f("ix_usage_rollups_user"), table_name="usage_rollups")
    op.drop_index(op.f("ix_usage_rollups_period_start"), table_name="usage_rollups")
    op.drop_table("usage_rollups")
