"""Session events: schema validation (``schema``) and event and prediction identities (``ids``)."""
