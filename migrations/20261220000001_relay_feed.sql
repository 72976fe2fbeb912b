-- The relay's feed ordered by commit (issue 18, DESIGN §7 "Recovery scales with changes").
--
-- A relay finds what its bus lost by reading what was committed since its last look, instead of
-- comparing every chat, user and session it serves. Each row it reads carries the id of the
-- transaction that wrote it (`xid8`, never wrapping). Transaction ids are handed out in start
-- order, not commit order, so "ids above the last one read" would skip a slow transaction that
-- commits late; the relay reads instead up to the oldest transaction still running (see
-- shared/src/db/changes.rs `horizon`), below which every transaction has ended and nothing new
-- can appear. Rows from before this migration keep NULL: they are never in a range, and the
-- columns are added without rewriting the tables.

-- Every change of a chat: stamped by the default, so no write path changes.
ALTER TABLE chat_changes ADD COLUMN xid xid8;
ALTER TABLE chat_changes ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX chat_changes_xid_idx ON chat_changes (xid, chat_id, rev) WHERE xid IS NOT NULL;

-- A user's chats changed (joined, left, a new group or private chat): `member_rev` moved. A
-- trigger stamps it, so every statement that moves `member_rev` is in the feed, chat creation
-- included (its members take no row in `chat_changes`).
ALTER TABLE users ADD COLUMN member_xid xid8;

CREATE FUNCTION users_stamp_member_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.member_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;

CREATE TRIGGER users_member_xid
    BEFORE UPDATE OF member_rev ON users
    FOR EACH ROW WHEN (NEW.member_rev IS DISTINCT FROM OLD.member_rev)
    EXECUTE FUNCTION users_stamp_member_xid();

CREATE INDEX users_member_xid_idx ON users (member_xid, id) WHERE member_xid IS NOT NULL;

-- A session ended: set with `ended_at` by the statements that end sessions
-- (shared/src/db/sessions.rs), so a relay closes its sockets even when the event was lost.
ALTER TABLE sessions ADD COLUMN ended_xid xid8;
CREATE INDEX sessions_ended_xid_idx ON sessions (ended_xid, id) WHERE ended_xid IS NOT NULL;
