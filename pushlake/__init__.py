"""pushlake: a data lake for telematics push data (receive -> log -> compact -> query)."""
__version__ = "0.1.0"
