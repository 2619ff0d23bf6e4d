"""Runs on each worker node: takes launches from arq, runs scripts, enforces limits."""
