-- no-transaction
-- A message's `read` flag asks "has every other member read this far?": NOT EXISTS a member
-- of the chat whose marker is below the message's seq. With only the primary key
-- (chat_id, user_id), that probe read every member of the chat: 40 ms for a 200-message page
-- in a 1,000-member group. Ordered by marker, it reads the lowest markers first and stops at
-- the first one below the seq (or finds none), whatever the group's size.
-- CONCURRENTLY (hence no transaction): built on a live database without blocking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS chat_members_read_idx
    ON chat_members (chat_id, last_read_seq);
