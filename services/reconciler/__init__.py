"""Periodic resync of Redis with PostgreSQL, and repair of what crashes leave behind."""
