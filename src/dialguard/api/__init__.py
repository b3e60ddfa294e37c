"""The admin HTTP API (aiohttp): decisions, scrubbing, blacklists, complaints, caller IDs."""
