-- Gatehouse schema 4: session records are stored as they are, not compressed.
--
-- A session record (the identity, the IdP's tokens) is often a little over 2 KB, the size
-- above which PostgreSQL compresses a row's long values before it stores the row. Every
-- login paid for compressing its session record (about 2% of the server's CPU per login,
-- measured with perf), and every read of it for decompressing. A row up to the size of a
-- page (8160 bytes) now stays as it is; a larger one is still moved out of line.
ALTER TABLE sessions SET (toast_tuple_target = 8160);
