"""The package's exceptions: one root, so callers can catch everything we raise."""


class StreamError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(StreamError):
    """A configuration value or CLI argument is not what was expected."""


class SchemaError(StreamError):
    """A record does not match its JSON Schema. The message names field, value and expectation."""


class InfraError(StreamError):
    """Kafka or ClickHouse is missing, unreachable, or not in the expected shape."""


class PrerequisiteError(StreamError):
    """Something a step needs is missing; the message says what to run."""
