"""Session events: schema validation (``schema``), the output records' types (``records``) and event and
prediction identities (``ids``)."""
