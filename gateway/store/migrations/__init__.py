"""Alembic migrations of the gateway's database; run them with ``Database.migrate()``."""
