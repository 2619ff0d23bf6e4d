"""The SCNS Conductor services. Each imports `shared` and never another service."""
