"""Tools over the core and the worker: replay, backtests, the demo, and running a worker process.

The only layer that imports ``simulator``.
"""
