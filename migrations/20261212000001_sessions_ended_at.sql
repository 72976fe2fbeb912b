-- The API's session cache asks once a second which sessions ended lately
-- (shared/src/session_cache.rs); only ended sessions are in this index, read as a short range.
CREATE INDEX sessions_ended_at_idx ON sessions (ended_at) WHERE ended_at IS NOT NULL;
