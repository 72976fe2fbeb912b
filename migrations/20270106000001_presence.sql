-- Presence (issue 21): who is online, across any number of relays, without trusting any relay
-- to say goodbye.
--
-- Each relay names itself (its host, process and a random suffix), beats every 5 s (`relays.heartbeat_at`) and keeps
-- one row per user it holds a connection of (`presence_connections`), written in a batch at
-- most once a second and only when a user's first connection opens or last one closes there.
-- A user is online while a row of theirs belongs to a relay that beat within the last 15 s
-- (`domain::presence::EXPIRY`): a relay that dies leaves no one online longer than that,
-- whether or not anyone cleans up after it. Any relay reaps a dead one's rows (folding its last
-- beat into its users' `last_seen_at`) and tells their contacts; reads never wait for that.
CREATE TABLE relays (
    id           text        PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE presence_connections (
    user_id  bigint NOT NULL REFERENCES users (id),
    relay_id text   NOT NULL REFERENCES relays (id),
    PRIMARY KEY (user_id, relay_id)
);
-- A relay's rows, for its reaping.
CREATE INDEX presence_connections_relay_idx ON presence_connections (relay_id);

-- When the user's last connection closed (or the relay holding it last beat); whether their
-- client says they are away; who sees their presence (everyone they share a chat with, or
-- nobody: then they see no one's either); whether they send read receipts (off: they see
-- none either). Constant defaults: free to add on a large table.
ALTER TABLE users
    ADD COLUMN last_seen_at        timestamptz,
    ADD COLUMN presence_away       boolean NOT NULL DEFAULT false,
    ADD COLUMN presence_visibility text    NOT NULL DEFAULT 'contacts'
        CHECK (presence_visibility IN ('contacts', 'nobody')),
    ADD COLUMN read_receipts       boolean NOT NULL DEFAULT true;
