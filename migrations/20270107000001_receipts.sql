-- Receipts (issue 21): per member, when each message reached one of their devices
-- (delivered) and when they read it (read), at O(1) per receipt, never a row per message and
-- member.
--
-- - `delivered_seq`: how far the member's devices have been handed messages by a relay,
--   advanced in a batch once a second (ws-relay's keeper); like the read marker it only moves
--   forward and covers every message up to it. `delivered_rev` and `delivered_xid` let it
--   converge as read markers do: a resuming device is sent those moved at or after its rev,
--   and the relay's poller finds those whose event was lost.
-- - `receipt_marks`: one row per marker move (kind `delivered` or `read`) with its time. The
--   time member M received or read message S is that of M's first mark of the kind at or past
--   S: one index probe per member.
-- - `receipts`: the member's `users.read_receipts`, kept on each membership so a message's
--   `read` flag (read by every other member) can treat a member who hides their reads as not
--   having read, with the same one index probe as before: `shown_read_seq` is their marker
--   when they share reads and 0 when they do not, and the flag's index is rebuilt on it.
ALTER TABLE chat_members
    ADD COLUMN delivered_seq bigint  NOT NULL DEFAULT 0,
    ADD COLUMN delivered_rev bigint  NOT NULL DEFAULT 0,
    ADD COLUMN delivered_xid xid8,
    ADD COLUMN receipts      boolean NOT NULL DEFAULT true;

UPDATE chat_members me SET receipts = false
FROM users u WHERE u.id = me.user_id AND NOT u.read_receipts;

ALTER TABLE chat_members ADD COLUMN shown_read_seq bigint
    GENERATED ALWAYS AS (CASE WHEN receipts THEN last_read_seq ELSE 0 END) STORED;

DROP INDEX IF EXISTS chat_members_read_idx;
CREATE INDEX chat_members_read_idx ON chat_members (chat_id, shown_read_seq);

CREATE INDEX chat_members_delivered_xid_idx ON chat_members (delivered_xid, chat_id, user_id)
    WHERE delivered_xid IS NOT NULL;

CREATE TABLE receipt_marks (
    chat_id bigint      NOT NULL,
    user_id bigint      NOT NULL,
    kind    text        NOT NULL CHECK (kind IN ('delivered', 'read')),
    seq     bigint      NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, user_id, kind, seq)
);
