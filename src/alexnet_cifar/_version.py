"""The package version: one owner, imported wherever it is reported."""

__version__ = "0.1.0"
