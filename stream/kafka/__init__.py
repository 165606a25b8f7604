"""Kafka plumbing: the embedded broker for development and tests, and topic administration."""
