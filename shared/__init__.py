"""The code every SCNS Conductor service stands on: settings, keys, events, db, lua, models.

`shared` never imports from `services`.
"""
