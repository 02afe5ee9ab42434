"""ETCHR services: the library every service and tool shares."""

__version__ = "0.1.0"
