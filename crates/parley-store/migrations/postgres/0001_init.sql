-- Parley schema, version 1 (PostgreSQL). Kept in step with ../sqlite/0001_init.sql: same tables,
-- same columns, the common type subset (TEXT ids, BIGINT milliseconds and 0/1 flags, BYTEA
-- ciphertexts). Every tenant-owned table has tenant_id first in its key.

CREATE TABLE tenants (
    id              TEXT PRIMARY KEY,
    slug            TEXT NOT NULL UNIQUE,
    name_ct         BYTEA NOT NULL,
    site_key        TEXT NOT NULL UNIQUE,
    allowed_origins TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    audit_seq       BIGINT NOT NULL,
    audit_head      BYTEA NOT NULL
);

CREATE TABLE tenant_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    key_id        BIGINT NOT NULL,
    master_key_id TEXT NOT NULL,
    wrapped       BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key_id)
);

CREATE TABLE departments (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    name_key   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT departments_name_unique UNIQUE (tenant_id, name_key)
);

CREATE TABLE users (
    tenant_id            TEXT NOT NULL REFERENCES tenants (id),
    id                   TEXT NOT NULL,
    email_ct             BYTEA NOT NULL,
    email_index          BYTEA NOT NULL,
    display_name_ct      BYTEA NOT NULL,
    role                 TEXT NOT NULL,
    capacity             BIGINT NOT NULL,
    password_hash        TEXT NOT NULL,
    must_change_password BIGINT NOT NULL,
    disabled             BIGINT NOT NULL,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
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
    token_hash   BYTEA PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);
CREATE INDEX sessions_by_user ON sessions (tenant_id, user_id);

CREATE TABLE audit_events (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    seq       BIGINT NOT NULL,
    id        TEXT NOT NULL,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT,
    ip        TEXT,
    detail    TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
