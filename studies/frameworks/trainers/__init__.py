"""Standalone trainer scripts, one per framework, run in that framework's Python (aer is not importable there)."""
