-- no-transaction
-- The pins of a chat, newest first (see 20270108000001).
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_pinned_idx
    ON messages (chat_id, pinned_at DESC, id DESC) WHERE pinned_at IS NOT NULL;
