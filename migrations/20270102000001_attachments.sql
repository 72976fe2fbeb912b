-- Files sent with messages (issue 20; shared/src/store/attachments.rs, shared/src/blobs.rs).
--
-- A row is made by POST /chat/attachments before any byte is uploaded; the bytes live in the
-- object store under `object_key` (a random name: knowing an id never finds the bytes). Its
-- life: pending (a link was handed out) → ready (the bytes were checked against the declared
-- size and type, an image measured and its thumbnail stored) → sent (a message carries it) →
-- deleted (its message was deleted: out of reach at once; the pruning deletes the objects and
-- then the row). Pending and ready rows older than a day are pruned the same way.
CREATE TABLE attachments (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uploader_id   bigint      NOT NULL REFERENCES users (id),
    object_key    text        NOT NULL UNIQUE,
    filename      text        NOT NULL,
    content_type  text        NOT NULL,
    size          bigint      NOT NULL CHECK (size > 0),
    state         text        NOT NULL DEFAULT 'pending'
                              CHECK (state IN ('pending', 'ready', 'sent', 'deleted')),
    width         integer,
    height        integer,
    thumbnail_key text,
    chat_id       bigint      REFERENCES chats (id),
    message_id    bigint      REFERENCES messages (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- The upload link stops working then; a send after it still works if the bytes arrived.
    upload_expires_at timestamptz NOT NULL,
    CHECK ((state = 'sent') = (message_id IS NOT NULL) OR state = 'deleted')
);

-- A user's quota and unsent count; the pruning's "unsent and old".
CREATE INDEX attachments_uploader_idx ON attachments (uploader_id, state);
CREATE INDEX attachments_unsent_idx ON attachments (created_at) WHERE state IN ('pending', 'ready');
CREATE INDEX attachments_deleted_idx ON attachments (id) WHERE state = 'deleted';
-- Deleting a message takes its attachments out of reach.
CREATE INDEX attachments_message_idx ON attachments (message_id) WHERE message_id IS NOT NULL;

-- What MessageOut.attachments shows, written with the message (a constant default: adding the
-- column does not rewrite the table).
ALTER TABLE messages ADD COLUMN attachments jsonb NOT NULL DEFAULT '[]';
