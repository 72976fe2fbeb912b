-- Revisions: every change to a chat takes the next `rev` of that chat, in the change's own
-- transaction, and is recorded in `chat_changes`, so "everything after rev R" is one index range.
-- See README "Revisions" and DESIGN §2.5.

-- The chat's change counter, next to `last_seq`: the same row lock that orders senders orders
-- every other change, so revs are gap-free and in commit order.
ALTER TABLE chats ADD COLUMN rev bigint NOT NULL DEFAULT 0;

-- Bumped whenever the user joins or leaves a chat: a relay compares it with what it knows to
-- find a lost `chat.added`/`chat.removed` without listing every connected user's chats.
ALTER TABLE users ADD COLUMN member_rev bigint NOT NULL DEFAULT 0;

-- The chat's rev when the member joined: a device that learns of the chat late delivers the
-- changes after it, so nothing between the join and the relay's subscription is lost.
ALTER TABLE chat_members ADD COLUMN joined_rev bigint NOT NULL DEFAULT 0;

ALTER TABLE messages
    -- The rev of the message's latest change (its creation, edit, deletion or reaction).
    ADD COLUMN rev         bigint      NOT NULL DEFAULT 0,
    -- The rev that created it: maps a seq to a rev for clients that resume by seq.
    ADD COLUMN created_rev bigint      NOT NULL DEFAULT 0,
    ADD COLUMN edited_at   timestamptz,
    -- A deleted message is a tombstone: it keeps its id and seq, its text is erased.
    ADD COLUMN deleted_at  timestamptz,
    -- A message of the same chat (checked by the send path; messages are never removed, so no
    -- foreign key is needed to keep it pointing somewhere, and the send path saves its check).
    ADD COLUMN reply_to    bigint,
    -- The reactions as MessageOut shows them ([{emoji, count, user_ids}]), recomputed from
    -- `message_reactions` by each reaction change, so reading a message never aggregates.
    ADD COLUMN reactions   jsonb       NOT NULL DEFAULT '[]';

-- Existing messages become the changes they were: in a chat without edits, rev = seq.
UPDATE messages SET rev = seq, created_rev = seq;
UPDATE chats SET rev = last_seq;

-- Unread counts subtract deleted messages after the marker; this index holds only those.
CREATE INDEX messages_deleted_idx ON messages (chat_id, seq) WHERE deleted_at IS NOT NULL;

CREATE TABLE message_reactions (
    message_id bigint      NOT NULL REFERENCES messages (id),
    emoji      text        NOT NULL,
    user_id    bigint      NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, emoji, user_id)
);

-- The change log: one row per rev. A message change points at the message (whose row holds its
-- current state); a membership change names the member. No foreign keys: the rows are written
-- on the send path, right after the rows they point at, in the same transaction.
CREATE TABLE chat_changes (
    chat_id    bigint      NOT NULL,
    rev        bigint      NOT NULL,
    kind       text        NOT NULL CHECK (kind IN (
                   'message', 'edited', 'deleted', 'reaction_added', 'reaction_removed',
                   'member_joined', 'member_left')),
    message_id bigint,
    user_id    bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, rev)
);

INSERT INTO chat_changes (chat_id, rev, kind, message_id, user_id, created_at)
SELECT chat_id, seq, 'message', id, sender_id, created_at FROM messages;
