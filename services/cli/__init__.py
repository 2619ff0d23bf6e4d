"""The `scns` command: client verbs, `scns run SERVICE`, `scns up`."""
