"""aer: audio event recognition on AudioSet's embedding features."""

__version__ = "0.1.0"
