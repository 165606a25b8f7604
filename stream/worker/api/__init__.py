"""The worker's HTTP API (``STREAM_API_PORT``): users' features and scores, decisions, models; docs/api.md."""
