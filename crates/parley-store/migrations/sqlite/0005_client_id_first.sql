-- The log's uniqueness of client_msg_id per chat, keyed by the id first. Clients give their ids
-- a time-ordered prefix (docs/PROTOCOL.md), so new entries land together at the end of one index
-- instead of on a leaf of their own chat's part of it: with messages to hundreds of chats at
-- once, the commit then writes a few pages of this index, not one per message
-- (docs/BENCHMARKS.md). The lookup is the same equality on all three columns.
--
-- SQLite cannot change a table's constraint in place: the log is copied into a table of the new
-- shape, which then takes its name. No other table refers to the log.
CREATE TABLE conversation_events_new (
    tenant_id       TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    at              INTEGER NOT NULL,
    author          TEXT NOT NULL,
    client_msg_id   TEXT,
    body_ct         BLOB,
    data            TEXT NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id, seq),
    CONSTRAINT events_client_msg_id_unique UNIQUE (client_msg_id, tenant_id, conversation_id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
);
INSERT INTO conversation_events_new (tenant_id, conversation_id, seq, kind, at, author, client_msg_id, body_ct, data)
    SELECT tenant_id, conversation_id, seq, kind, at, author, client_msg_id, body_ct, data
    FROM conversation_events ORDER BY tenant_id, conversation_id, seq;
DROP TABLE conversation_events;
ALTER TABLE conversation_events_new RENAME TO conversation_events;
