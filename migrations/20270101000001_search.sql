-- Message search (GET /chat/search; store/search.rs).
--
-- The text search configuration: `simple` with `unaccent` in front. Words are split by
-- Postgres's default parser, folded to lower case and stripped of diacritics (`Ё` → `е`,
-- `é` → `e`), with no stemming and no stop words, so one configuration serves every language
-- people write in. Russian and English stemmers chained would stem each word by one
-- language's rules and drop the other's stop words, and a stem breaks search as you type
-- (the prefix "runn" is not a prefix of the stem "run"). What it does not do: find
-- "messages" from "message" unless typed as the last (prefix) word, or split Chinese or
-- Japanese text into words. `unaccent` is a trusted extension: the database's owner may
-- create it without being a superuser.
CREATE EXTENSION IF NOT EXISTS unaccent;

CREATE TEXT SEARCH CONFIGURATION windi_search (COPY = simple);
ALTER TEXT SEARCH CONFIGURATION windi_search
    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part,
                      numword, numhword, hword_numpart
    WITH unaccent, simple;

-- Each message's words, computed by Postgres in the transaction that writes its text (a
-- send, an edit, a deletion that blanks it), whichever binary writes it: a committed message
-- is found at once, a deleted one never. Stored rather than an index expression: search
-- walks the newest messages checking each one (store/search.rs), and checking a stored
-- vector costs ~0.5 µs where parsing the text again costs ~8 µs. The price is space (about
-- 1.4× the text) and, once, this migration rewriting `messages` (about 40 s a million
-- messages on 2 cores, writes waiting meanwhile; docs/operations.md).
-- `<` and `>` are read as spaces: the parser takes `<b>` or `<Vec<String>>` for HTML tags
-- and drops them with the words inside, and chat text is not HTML (people paste code).
ALTER TABLE messages
    ADD COLUMN search tsvector
    GENERATED ALWAYS AS (to_tsvector('windi_search'::regconfig, translate(text, '<>', '  ')))
    STORED;

-- The words of live messages: a deleted message's text is blank anyway.
CREATE INDEX messages_search_idx ON messages USING gin (search) WHERE deleted_at IS NULL;
