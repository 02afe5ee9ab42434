"""Pydantic models for every payload: one module per surface, kept apart from serving logic."""
