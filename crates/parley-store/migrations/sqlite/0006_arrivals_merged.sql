-- How far the arrivals file (`<db>-arrivals`, see src/sqlite_arrivals.rs) has been merged into
-- the chats' logs: every generation up to `merged` is in conversation_events, and a row of the
-- arrivals file counts only while its generation is above it. One row, updated in the same
-- transaction as the rows it covers.
CREATE TABLE arrivals_merged (merged INTEGER NOT NULL);
INSERT INTO arrivals_merged (merged) VALUES (0);
