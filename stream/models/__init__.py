"""Models: the one table of model identities, the versioned registry, and batched scoring.

* :mod:`stream.models.table`: name -> trigger, feature list, library, label;
* :mod:`stream.models.registry`: versioned model files (native formats + JSON metadata) and promotion;
* :mod:`stream.models.scoring`: loading the promoted versions and scoring feature rows in batches.
"""

from stream.models.table import MODELS, REGISTERED_AS, SEGMENTS, SERVED_FEATURES, TRIGGERS, Model, Segments

__all__ = ["MODELS", "REGISTERED_AS", "SEGMENTS", "SERVED_FEATURES", "TRIGGERS", "Model", "Segments"]
