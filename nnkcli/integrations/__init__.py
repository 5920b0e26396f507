"""Integrations with training frameworks and experiment trackers."""
