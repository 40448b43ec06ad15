"""The package version: the one place it is stated (setup.py reads it)."""

__version__ = "0.5.0"
