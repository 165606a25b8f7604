-- The name of a categorical score (model segment: the segment's name, the score being its id); '' for the other
-- models. Added to tables created before segments were served online.
ALTER TABLE {db}.predictions ADD COLUMN IF NOT EXISTS label LowCardinality(String) DEFAULT '';
ALTER TABLE {db}.predictions_shadow ADD COLUMN IF NOT EXISTS label LowCardinality(String) DEFAULT ''
