"""The only place placement decisions are made."""
