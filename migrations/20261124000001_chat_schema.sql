-- The whole chat schema. Applied migrations are never edited: change the schema with a new file.

CREATE TABLE users (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text        NOT NULL,
    email         text        NOT NULL,
    -- argon2id in PHC string form: the parameters travel with the hash.
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Email is unique case-insensitively; the constraint name is what the API maps to 409.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE chats (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('private', 'group')),
    name        text,
    creator_id  bigint      NOT NULL REFERENCES users (id),
    -- The per-chat message counter. A row, not a Postgres sequence: sequences leave gaps on
    -- rollback, and the send transaction's UPDATE of this row also serialises senders per chat.
    last_seq    bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- A private chat's ordered user pair (low < high), null for groups.
    private_low  bigint     REFERENCES users (id),
    private_high bigint     REFERENCES users (id),
    CONSTRAINT chats_private_pair_check CHECK (
        (kind = 'private' AND private_low IS NOT NULL AND private_high IS NOT NULL AND private_low < private_high)
        OR (kind = 'group' AND private_low IS NULL AND private_high IS NULL)
    )
);
-- Two racing first messages between the same users create one chat: the second INSERT waits on
-- this index and then finds the first one's row.
CREATE UNIQUE INDEX chats_private_pair_key ON chats (private_low, private_high);

CREATE TABLE chat_members (
    chat_id       bigint      NOT NULL REFERENCES chats (id),
    user_id       bigint      NOT NULL REFERENCES users (id),
    role          text        NOT NULL CHECK (role IN ('owner', 'member')),
    -- Only ever moves forward: every write is greatest(old, new).
    last_read_seq bigint      NOT NULL DEFAULT 0,
    joined_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, user_id)
);
-- "My chats" is the hot read of every client start.
CREATE INDEX chat_members_user_idx ON chat_members (user_id);

CREATE TABLE messages (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_id      bigint      NOT NULL REFERENCES chats (id),
    seq          bigint      NOT NULL,
    sender_id    bigint      NOT NULL REFERENCES users (id),
    text         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- The client's idempotency key, scoped to the sender. NULL keys never collide.
    dedup_key    text,
    -- sha256(chat_id || text): tells a true replay from a reused key with other content.
    content_hash bytea       NOT NULL,
    CONSTRAINT messages_chat_seq_key UNIQUE (chat_id, seq),
    CONSTRAINT messages_sender_dedup_key UNIQUE (sender_id, dedup_key)
);
