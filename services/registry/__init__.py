"""Worker membership: heartbeats in, `worker-joined` / `worker-left` out, drain and resume."""
