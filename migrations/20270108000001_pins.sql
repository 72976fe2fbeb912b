-- no-transaction
-- Pinned messages (issue 21). A pin is a change of the message like an edit: it takes the
-- chat's next rev and is logged (`pinned`, `unpinned`), so every device learns it live, on
-- resume and from /chat/changes as a `message_updated` whose message carries `pinned_at`.
-- A deletion unpins. `GET /chat/{chat_id}/pins` reads the pins of a chat from their own
-- partial index, newest pin first, however long the history.
--
-- As in 20261231000001: the kind check is replaced NOT VALID in a short transaction and
-- validated apart, and the index is built CONCURRENTLY (alone in 20270108000002: a statement
-- that must run outside a transaction cannot share a file), so neither blocks writes.
BEGIN;
ALTER TABLE messages ADD COLUMN pinned_at timestamptz;
ALTER TABLE chat_changes DROP CONSTRAINT chat_changes_kind_check;
ALTER TABLE chat_changes ADD CONSTRAINT chat_changes_kind_check CHECK (kind IN (
    'message', 'edited', 'deleted', 'reaction_added', 'reaction_removed',
    'member_joined', 'member_left', 'member_promoted', 'pinned', 'unpinned')) NOT VALID;
COMMIT;
ALTER TABLE chat_changes VALIDATE CONSTRAINT chat_changes_kind_check;
