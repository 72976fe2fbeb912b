-- An operator can disable an account (`windi admin disable`): it cannot log in, and its
-- sessions end. Unlike deletion it keeps everything and can be undone (`windi admin enable`).
ALTER TABLE users ADD COLUMN disabled_at timestamptz;
