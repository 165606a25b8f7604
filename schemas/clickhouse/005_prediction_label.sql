-- The name of a categorical score, empty for the other models: model segment has the segment's id as its score and
-- the segment's name as its label. Added to tables created before segments were served online.
-- (No semicolon in these comments: the files are split into statements at each one.)
ALTER TABLE {db}.predictions ADD COLUMN IF NOT EXISTS label LowCardinality(String) DEFAULT '';
ALTER TABLE {db}.predictions_shadow ADD COLUMN IF NOT EXISTS label LowCardinality(String) DEFAULT ''
