-- Parley schema, version 1 (SQLite). Kept in step with ../postgres/0001_init.sql: same tables,
-- same columns, the common type subset (TEXT ids, INTEGER milliseconds and 0/1 flags, BLOB
-- ciphertexts). Every tenant-owned table has tenant_id first in its key.

CREATE TABLE tenants (
    id              TEXT PRIMARY KEY,
    slug            TEXT NOT NULL UNIQUE,
    name_ct         BLOB NOT NULL,
    site_key        TEXT NOT NULL UNIQUE,
    allowed_origins TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    audit_seq       INTEGER NOT NULL,
    audit_head      BLOB NOT NULL
);

CREATE TABLE tenant_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    key_id        INTEGER NOT NULL,
    master_key_id TEXT NOT NULL,
    wrapped       BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key_id)
);

CREATE TABLE departments (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    name_key   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT departments_name_unique UNIQUE (tenant_id, name_key)
);

CREATE TABLE users (
    tenant_id            TEXT NOT NULL REFERENCES tenants (id),
    id                   TEXT NOT NULL,
    email_ct             BLOB NOT NULL,
    email_index          BLOB NOT NULL,
    display_name_ct      BLOB NOT NULL,
    role                 TEXT NOT NULL,
    capacity             INTEGER NOT NULL,
    password_hash        TEXT NOT NULL,
    must_change_password INTEGER NOT NULL,
    disabled             INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT users_email_unique UNIQUE (tenant_id, email_index)
);

CREATE TABLE user_departments (
    tenant_id     TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    department_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, user_id, department_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id),
    FOREIGN KEY (tenant_id, department_id) REFERENCES departments (tenant_id, id)
);

CREATE TABLE sessions (
    token_hash   BLOB PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);
CREATE INDEX sessions_by_user ON sessions (tenant_id, user_id);

CREATE TABLE audit_events (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    seq       INTEGER NOT NULL,
    id        TEXT NOT NULL,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT,
    ip        TEXT,
    detail    TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
