"""The streaming worker: faust app wiring, the batch processor, agents, delivery, metrics and health.

* ``app``: wiring only (topics, tables, agents, sink);
* ``processor``: one batch of events -> state, scores, decisions, dead letters;
* ``agents/``: the faust agents (events, articles, batching, watermarks, the output runtime);
* ``delivery``: the ledger that commits an offset only when everything before it is delivered;
* ``metrics``, ``health``, ``logs``, ``tuning``: operations;
* ``run``: ``python -m stream worker``.
"""
