"""What every layer may use: the settings, the metrics, and the grammar of
``Host``/``Origin`` values and Redis URLs. What the metrics rely on of
prometheus_client beyond its documented API is in :mod:`.prometheus_compat`.

Imports nothing else of the server. No I/O at import; nothing here talks to
Redis or serves HTTP.
"""
