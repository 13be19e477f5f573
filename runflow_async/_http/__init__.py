"""The only aiohttp-client code and the only place that retries."""
