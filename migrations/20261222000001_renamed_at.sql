-- When the user last changed their name (or was deleted, which renames them): a device that
-- resumes is sent the names of its chats' members that changed since its revs were committed
-- (issue 18, "state plus events equals a fresh fetch" for name changes made while it was away).
ALTER TABLE users ADD COLUMN renamed_at timestamptz;
