-- Scores of challenger models, scored in shadow on the same rows as production (STREAM_SHADOW_ALIAS): the same
-- columns, engine and ids as predictions, so champion and challenger join on event_id. Kept apart so that nothing
-- reading predictions sees them.
CREATE TABLE IF NOT EXISTS {db}.predictions_shadow AS {db}.predictions
