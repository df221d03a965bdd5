-- Nothing changes here: on PostgreSQL `conversations.last_seq` stays. Allocating the next
-- sequence number updates it, and that row lock orders the writers of several nodes. (On SQLite
-- this migration drops the column; a chat's log is its counter there.)
SELECT 1;
