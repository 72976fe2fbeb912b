-- Sessions, finding people, leaving (issue 10). See README "Sessions" and DESIGN §2.6.

-- A login creates a session; its access tokens name it (`sid`), and every authenticated request
-- checks it is still live, so ending it (logout, logout-all, a password change, account
-- deletion, a reused refresh token) refuses its access token at once, everywhere.
CREATE TABLE sessions (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id            bigint      NOT NULL REFERENCES users (id),
    -- What the client said it was at login, cut to 256 characters (for the session list).
    user_agent         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- Moved by refreshes and, at most once a minute, by authenticated requests.
    last_used_at       timestamptz NOT NULL DEFAULT now(),
    -- NULL while the session is live.
    ended_at           timestamptz,
    -- sha256 of the one refresh token that is valid now; the token itself is never stored.
    refresh_hash       bytea       NOT NULL,
    refresh_expires_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX sessions_refresh_hash_key ON sessions (refresh_hash);
-- "My live sessions": the session list, logout-all and a password change.
CREATE INDEX sessions_user_live_idx ON sessions (user_id) WHERE ended_at IS NULL;

-- Refresh tokens already exchanged. One presented again is a stolen copy (or a stolen
-- original whose thief refreshed first): the session it belonged to ends.
CREATE TABLE used_refresh_tokens (
    token_hash bytea       PRIMARY KEY,
    session_id bigint      NOT NULL REFERENCES sessions (id),
    used_at    timestamptz NOT NULL DEFAULT now()
);

-- A deleted account keeps its row (messages and chats point at it) but loses its email, so
-- the address can register again, and its password hash, so nobody can log in as it.
ALTER TABLE users ADD COLUMN deleted_at timestamptz;
ALTER TABLE users ALTER COLUMN email DROP NOT NULL;

-- Finding people by name: every word of every live user's name, lower-cased, in byte order
-- (COLLATE "C"), so "names with a word starting with q" is one B-tree range scan
-- (`word >= q AND word < q || U+10FFFF`) that stops after `limit` rows, at any table size.
-- Kept by a trigger, so every way a name changes (register, rename, deletion) keeps it true.
CREATE TABLE user_name_words (
    word    text   COLLATE "C" NOT NULL,
    user_id bigint NOT NULL REFERENCES users (id),
    PRIMARY KEY (word, user_id)
);
CREATE INDEX user_name_words_user_idx ON user_name_words (user_id);

CREATE FUNCTION users_index_name_words() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.name IS NOT DISTINCT FROM OLD.name AND NEW.deleted_at IS NOT DISTINCT FROM OLD.deleted_at THEN
            RETURN NEW;
        END IF;
        DELETE FROM user_name_words WHERE user_id = NEW.id;
    END IF;
    IF NEW.deleted_at IS NULL THEN
        INSERT INTO user_name_words (word, user_id)
        SELECT DISTINCT w, NEW.id
        FROM regexp_split_to_table(lower(NEW.name), '\s+') AS w
        WHERE w <> ''
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER users_name_words
    AFTER INSERT OR UPDATE OF name, deleted_at ON users
    FOR EACH ROW EXECUTE FUNCTION users_index_name_words();

INSERT INTO user_name_words (word, user_id)
SELECT DISTINCT w, u.id
FROM users u, regexp_split_to_table(lower(u.name), '\s+') AS w
WHERE w <> '' AND u.deleted_at IS NULL
ON CONFLICT DO NOTHING;

-- Unwanted contact: `blocker` does not want private messages from, or to be added to groups
-- by, `blocked`.
CREATE TABLE blocks (
    blocker_id bigint      NOT NULL REFERENCES users (id),
    blocked_id bigint      NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id),
    CONSTRAINT blocks_not_self CHECK (blocker_id <> blocked_id)
);
-- "Who blocked me" is what the send path asks about the other side.
CREATE INDEX blocks_blocked_idx ON blocks (blocked_id);
