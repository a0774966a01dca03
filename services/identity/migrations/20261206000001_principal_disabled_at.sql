-- When a principal was disabled: tokens issued at or before it are refused everywhere (the
-- deny list services poll is rebuilt from this column).
ALTER TABLE principals ADD COLUMN disabled_at timestamptz;
UPDATE principals SET disabled_at = now() WHERE disabled;
