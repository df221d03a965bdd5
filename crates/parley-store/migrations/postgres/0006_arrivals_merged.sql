-- SQLite only: its arrivals file's merge mark (see migrations/sqlite/0006_arrivals_merged.sql).
-- PostgreSQL writes messages straight into the chats' logs; the version is kept so that both
-- trees carry the same ones.
SELECT 1;
