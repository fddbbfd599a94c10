"""What every layer may use: the settings, the metrics, and the grammar of
``Host``/``Origin`` values and Redis URLs.

Imports nothing else of the server. No I/O at import; nothing here talks to
Redis or serves HTTP.
"""
