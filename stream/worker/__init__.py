"""The streaming worker: faust app wiring, the batch processor, agents, delivery, metrics and health.

* ``app``: wiring only (topics, tables, agents, sink);
* ``processor``: one batch of events -> state, scores, decisions, dead letters (orchestration only),
  over ``parsing`` (records -> events and dead letters), ``caches`` (decoded user and article
  states), ``ads`` (bandit counts, the impression-click join, decisions) and ``stores``;
* ``agents/``: the faust agents (events, articles, batching, watermarks);
* ``delivery``: the commit protocol: hold, redelivery filter, settle, ack, and the ledger that
  commits an offset only when everything before it is delivered;
* ``publisher``: produces each batch's outputs, and acks it through ``delivery`` once they are confirmed;
* ``metrics``, ``health``, ``logs``, ``tuning``: operations;
* ``run``: ``python -m stream worker``.
"""
