"""Alembic migrations of grantbot's schema, run programmatically (``grantbot migrate``)."""
