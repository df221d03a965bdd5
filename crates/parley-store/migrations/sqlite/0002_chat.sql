-- Parley schema, version 2 (SQLite): visitors, conversations as event logs, agent presence,
-- offline messages, department routing settings. Kept in step with ../postgres/0002_chat.sql.

ALTER TABLE departments ADD COLUMN routing_mode TEXT NOT NULL DEFAULT 'offer';
ALTER TABLE departments ADD COLUMN offer_timeout_ms INTEGER NOT NULL DEFAULT 30000;
-- How long a visitor may be silent before the agent sees them as weak, then lost, and how long a
-- lost visitor has to come back before the chat ends.
ALTER TABLE tenants ADD COLUMN visitor_weak_after_ms INTEGER NOT NULL DEFAULT 30000;
ALTER TABLE tenants ADD COLUMN visitor_lost_after_ms INTEGER NOT NULL DEFAULT 90000;
ALTER TABLE tenants ADD COLUMN visitor_timeout_ms INTEGER NOT NULL DEFAULT 600000;
ALTER TABLE departments ADD COLUMN prechat_fields TEXT NOT NULL DEFAULT '{"name":"required","email":"optional","question":"optional"}';

CREATE TABLE visitors (
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    id           TEXT NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE conversations (
    tenant_id        TEXT NOT NULL,
    id               TEXT NOT NULL,
    visitor_id       TEXT NOT NULL,
    department_id    TEXT NOT NULL,
    status           TEXT NOT NULL,
    agent_id         TEXT,
    offered_to       TEXT,
    offer_expires_at INTEGER,
    declined_by      TEXT NOT NULL,
    prechat_ct       BLOB NOT NULL,
    last_seq         INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    queued_at        INTEGER NOT NULL,
    ended_at         INTEGER,
    visitor_state    TEXT NOT NULL,
    visitor_seen_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, visitor_id) REFERENCES visitors (tenant_id, id),
    FOREIGN KEY (tenant_id, department_id) REFERENCES departments (tenant_id, id),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES users (tenant_id, id)
);
CREATE INDEX conversations_by_visitor ON conversations (tenant_id, visitor_id, status);
CREATE INDEX conversations_by_status ON conversations (tenant_id, department_id, status, queued_at);
CREATE INDEX conversations_by_agent ON conversations (tenant_id, agent_id, status);
CREATE INDEX conversations_offers ON conversations (offer_expires_at);
CREATE INDEX conversations_liveness ON conversations (status, visitor_state, visitor_seen_at);

CREATE TABLE conversation_events (
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
    CONSTRAINT events_client_msg_id_unique UNIQUE (tenant_id, conversation_id, client_msg_id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
);

CREATE TABLE agent_presence (
    tenant_id    TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    status       TEXT NOT NULL,
    active_chats INTEGER NOT NULL,
    idle_since   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id),
    CONSTRAINT active_chats_not_negative CHECK (active_chats >= 0)
);

CREATE TABLE offline_messages (
    tenant_id     TEXT NOT NULL,
    id            TEXT NOT NULL,
    department_id TEXT NOT NULL,
    visitor_id    TEXT NOT NULL,
    content_ct    BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    handled_at    INTEGER,
    handled_by    TEXT,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, department_id) REFERENCES departments (tenant_id, id),
    FOREIGN KEY (tenant_id, visitor_id) REFERENCES visitors (tenant_id, id)
);
CREATE INDEX offline_messages_by_department ON offline_messages (tenant_id, department_id, created_at);
