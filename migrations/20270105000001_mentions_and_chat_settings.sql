-- Mentions (issue 21): the members a message names, shown with it (`MessageOut.mentions`),
-- and one row per mentioned member for what each of them asks of them: how many unread
-- messages of a chat mention me (`/chat/list`'s `unread_mentions`, a count over
-- `seq > last_read_seq`, one index range) and which messages do (`GET /chat/history/{id}?
-- mentions=me`). Written in the send's own transaction, removed in the deletion's: a
-- deleted message mentions no one. The sender is never a row (mentioning yourself is not a
-- notification). A constant default makes the new column free to add on a table of millions.
ALTER TABLE messages ADD COLUMN mentions bigint[] NOT NULL DEFAULT '{}';

CREATE TABLE message_mentions (
    user_id    bigint NOT NULL REFERENCES users (id),
    chat_id    bigint NOT NULL REFERENCES chats (id),
    seq        bigint NOT NULL,
    message_id bigint NOT NULL REFERENCES messages (id),
    PRIMARY KEY (user_id, chat_id, seq)
);
-- A deletion finds the rows of its message.
CREATE INDEX message_mentions_message_idx ON message_mentions (message_id);

-- Per chat, per member: notifications muted until a time ('infinity' for "forever", NULL for
-- not muted; a time past is the same as NULL) and which messages notify at all. What the
-- notification issue reads; clients show them with the chat.
ALTER TABLE chat_members
    ADD COLUMN muted_until timestamptz,
    ADD COLUMN notify text NOT NULL DEFAULT 'all' CHECK (notify IN ('all', 'mentions', 'none'));
