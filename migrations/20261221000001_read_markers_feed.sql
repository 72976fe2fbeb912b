-- Read markers converge like changes (issue 18, "Read state converges").
--
-- A marker is a member's own state, not a change of the chat (it takes no rev), so a lost
-- `message.read` event used to leave ticks and unread counts wrong until a reload. Each marker
-- move now records where it happened, so the relay can find it again:
-- - `read_xid`: the transaction that moved it, read by the relay's poller between two horizons
--   like the rest of its feed (migrations/20261220000001_relay_feed.sql): a connected device
--   gets a lost marker within the poll bound;
-- - `read_rev`: the chat's rev when it moved, so a device that resumes from rev R is sent the
--   markers that moved at or after R.
-- Rows from before keep NULL and 0: never in the feed, and older than any resume.
ALTER TABLE chat_members ADD COLUMN read_rev bigint NOT NULL DEFAULT 0;
ALTER TABLE chat_members ADD COLUMN read_xid xid8;
CREATE INDEX chat_members_read_xid_idx ON chat_members (read_xid, chat_id, user_id)
    WHERE read_xid IS NOT NULL;
