"""A horizontally scalable real-time chat server on aiohttp, aiotools and Redis."""

__version__ = "0.1.0"
