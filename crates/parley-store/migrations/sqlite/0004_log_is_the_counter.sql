-- A chat's last sequence number is read from its log (the last entry of the log's primary key):
-- with one writer holding the database's write lock there is nothing for a counter in the chat's
-- row to order, and keeping it up to date cost a second write per message.
ALTER TABLE conversations DROP COLUMN last_seq;
