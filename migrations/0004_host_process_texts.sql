-- What the process search matches, apart from the latest samples. `host_process_latest`
-- takes a new row version at every sample (its time and CPU move), so an index on its text
-- would be written at every sample too: a trigram index there made the collector's upsert
-- three to four times slower. A process's text changes rarely, so it lives here, one row per
-- process, written only when a newer sample brings a different text; the operator adds the
-- trigram index where pg_trgm is installed, and a search that few processes match reads it
-- instead of every process's text.

-- The text a search matches: the command line and the name, lower-cased once (`lower(x)
-- LIKE lower(p)` is what ILIKE does in a UTF-8 database, and several times faster), a line
-- break between them (a search holds no control characters, so no match spans both).
CREATE FUNCTION process_search_text(command_line text, process_name text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN lower(coalesce(command_line, '') || E'\n' || process_name);

CREATE TABLE host_process_texts (
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    start_time  timestamptz NOT NULL,
    search_text text        NOT NULL,
    PRIMARY KEY (host, pid, start_time)
);

INSERT INTO host_process_texts (host, pid, start_time, search_text)
SELECT host, pid, start_time, search_text FROM host_process_latest;

ALTER TABLE host_process_latest DROP COLUMN search_text;
