"""Model monitoring: online quality from delayed outcomes, and drift against training-time profiles.

* :mod:`stream.monitoring.quality`: AUC, log loss, calibration error, R², MAE over a rolling window
  of joined (outcome, prediction) pairs per model version;
* :mod:`stream.monitoring.profile`: the reference profile batch training stores with each model
  (per-feature quantile bins, missing share, CDF points, the prediction distribution);
* :mod:`stream.monitoring.drift`: PSI and KS per column over tumbling windows, with thresholds
  derived from the window size, and ADWIN on the per-prediction loss;
* :mod:`stream.monitoring.outputs`: Prometheus gauge values and ClickHouse rows;
* :mod:`stream.monitoring.compare`: champion against challenger on the same events (paired bootstrap);
* :mod:`stream.monitoring.horizon`: churn and conversion quality once their horizon has passed, joined
  in ClickHouse with the archived events (run by ``python -m stream outcomes``).

Library code: no Kafka, no clock, no threads; the worker (and ``stream outcomes``) owns when to call it.
See docs/monitoring.md.
"""

from stream.monitoring.compare import Comparison, paired_bootstrap
from stream.monitoring.drift import ColumnDrift, DriftReport, DriftWindow, LossDrift, psi, psi_threshold
from stream.monitoring.outputs import drift_rows, gauge_values, insert_monitoring, quality_rows
from stream.monitoring.profile import ReferenceProfile, build_profile, load_profile
from stream.monitoring.quality import QualitySnapshot, RollingQuality, quality

__all__ = [
    "ColumnDrift",
    "Comparison",
    "DriftReport",
    "DriftWindow",
    "LossDrift",
    "QualitySnapshot",
    "ReferenceProfile",
    "RollingQuality",
    "build_profile",
    "drift_rows",
    "gauge_values",
    "insert_monitoring",
    "load_profile",
    "paired_bootstrap",
    "psi",
    "psi_threshold",
    "quality",
    "quality_rows",
]
