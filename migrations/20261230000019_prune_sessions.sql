-- Pruning used refresh tokens and ended sessions (issue 19; shared/src/db/sessions.rs `prune`,
-- run hourly by `windi serve` and on a schedule by `windi admin prune`).

-- "Used tokens older than the retention", read a batch at a time.
CREATE INDEX used_refresh_tokens_used_at_idx ON used_refresh_tokens (used_at);
-- "The used tokens of this session": deleting a session checks its foreign key here, and the
-- pruning of an ended session's tokens reads them by it.
CREATE INDEX used_refresh_tokens_session_idx ON used_refresh_tokens (session_id);
