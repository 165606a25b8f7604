"""Backtests: the worker's own feature, scoring and bandit code over a replayed window.

* :mod:`stream.tools.backtest.run`: offline (BatchProcessor, no broker) and end-to-end (broker +
  ``python -m stream worker``) runs, and their agreement;
* :mod:`stream.tools.backtest.evaluate`: model quality against realized labels and the simulator's
  oracle, bandit policies, off-policy estimates (:mod:`stream.bandits.ope`);
* :mod:`stream.tools.backtest.report`: the Markdown + HTML report with PNG plots;
* :mod:`stream.tools.backtest.cli`: ``python -m stream backtest`` (and the ``replay`` command's
  registration).
"""
