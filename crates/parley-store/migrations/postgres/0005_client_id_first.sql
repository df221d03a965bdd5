-- The log's uniqueness of client_msg_id per chat, keyed by the id first. Clients give their ids
-- a time-ordered prefix (docs/PROTOCOL.md), so new entries land together at the end of one index
-- instead of on a leaf of their own chat's part of it: with messages to hundreds of chats at
-- once, fewer index pages are dirtied per commit (docs/BENCHMARKS.md). The lookup is the same
-- equality on all three columns.
ALTER TABLE conversation_events DROP CONSTRAINT events_client_msg_id_unique;
ALTER TABLE conversation_events ADD CONSTRAINT events_client_msg_id_unique UNIQUE (client_msg_id, tenant_id, conversation_id);
