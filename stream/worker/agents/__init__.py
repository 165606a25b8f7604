"""Faust agents of the worker. Each module registers its agents on an app with ``register(app, rt)``.

* ``events``: session events -> state, scores, bandit decisions, dead letters (per input partition).
* ``articles``: article events repartitioned by ``article_id`` -> popularity in a GlobalTable.
"""
