"""Ad placement bandits: Thompson sampling and its policies (``thompson``), off-policy estimates (``ope``)."""
