-- Timestamps are Unix milliseconds; ids are prefixed, time-ordered strings.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT,
    key_hash BLOB NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);

CREATE TABLE secrets (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    display_name TEXT,
    cache_ttl_secs BIGINT NOT NULL,
    version BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE rules (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    runtime TEXT NOT NULL,
    host_pattern TEXT NOT NULL,
    path_pattern TEXT,
    credential TEXT NOT NULL,
    header TEXT,
    param TEXT,
    value_template TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, credential) REFERENCES secrets (tenant_id, name),
    CHECK ((header IS NULL) <> (param IS NULL))
);
CREATE INDEX rules_tenant_runtime ON rules (tenant_id, runtime, id);
CREATE INDEX rules_tenant_credential ON rules (tenant_id, credential);

CREATE TABLE runtime_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    runtime TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX runtime_tokens_tenant_runtime ON runtime_tokens (tenant_id, runtime, id);
