"""The HTTP API (aiohttp): jobs, workers, resources, queue statistics."""
