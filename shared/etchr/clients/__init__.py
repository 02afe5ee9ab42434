"""Typed HTTP clients for the services, beside the protocol models they speak (``etchr.protocol``)."""
