-- no-transaction
-- An owner who leaves a group hands it to the longest-standing member. That hand-over is a
-- change of the chat like a join or a leave: it takes a rev of its own and is logged, so the
-- new owner (and every member) learns it live, on resume and from /chat/changes, instead of
-- only from the next full read of the chat list.
--
-- The new check is added NOT VALID in a short transaction, then validated on its own: the
-- validation reads every row of chat_changes, and VALIDATE CONSTRAINT does that without
-- blocking writes (ADD CONSTRAINT would hold the table's exclusive lock meanwhile).
BEGIN;
ALTER TABLE chat_changes DROP CONSTRAINT chat_changes_kind_check;
ALTER TABLE chat_changes ADD CONSTRAINT chat_changes_kind_check CHECK (kind IN (
    'message', 'edited', 'deleted', 'reaction_added', 'reaction_removed',
    'member_joined', 'member_left', 'member_promoted')) NOT VALID;
COMMIT;
ALTER TABLE chat_changes VALIDATE CONSTRAINT chat_changes_kind_check;
