-- Gatehouse schema 1. Records are the same versioned JSON the embedded store keeps (bytea,
-- UTF-8 JSON: `convert_from(record, 'UTF8')::jsonb` reads them); the typed columns exist so
-- PostgreSQL can index what Gatehouse looks up.

CREATE TABLE users (
    id      text PRIMARY KEY,
    record  bytea NOT NULL
);

-- An IdP identity (connection, sub) -> the local account it is linked to.
CREATE TABLE user_links (
    connection  text NOT NULL,
    subject     text NOT NULL,
    user_id     text NOT NULL,
    PRIMARY KEY (connection, subject)
);
CREATE INDEX user_links_user ON user_links (user_id);

-- Verified emails (trimmed, lower-case) -> the account that holds each.
CREATE TABLE user_emails (
    email    text PRIMARY KEY,
    user_id  text NOT NULL
);

-- Usernames (lower-case) -> the account; unique without regard to case.
CREATE TABLE user_usernames (
    username  text PRIMARY KEY,
    user_id   text NOT NULL
);

-- Server-side sessions: the revocation record behind each session cookie.
CREATE TABLE sessions (
    sid         text PRIMARY KEY,
    record      bytea NOT NULL,
    user_id     text,
    connection  text NOT NULL,
    subject     text NOT NULL,
    idp_sid     text,
    expires_at  bigint NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX sessions_subject ON sessions (connection, subject);
CREATE INDEX sessions_idp_sid ON sessions (connection, idp_sid) WHERE idp_sid IS NOT NULL;
CREATE INDEX sessions_expiry ON sessions (expires_at);

-- The append-only audit log.
CREATE TABLE audit (
    seq      bigserial PRIMARY KEY,
    user_id  text,
    entry    bytea NOT NULL
);
CREATE INDEX audit_user ON audit (user_id, seq) WHERE user_id IS NOT NULL;

-- Keys every replica must share (session cookie keys, second-factor sealing keys, the
-- identity-header signing key) when the config gives none: the first replica's wins.
CREATE TABLE shared_keys (
    name        text PRIMARY KEY,
    value       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Session changes (ended or rewritten), in order, for the other replicas: each is told by
-- NOTIFY gatehouse_sessions and reads the rows after the last it saw (also after a
-- reconnect). Old rows are pruned.
CREATE TABLE session_events (
    seq     bigserial PRIMARY KEY,
    sid     text NOT NULL,
    origin  text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);

-- Login states already used (single use across replicas), until they expire.
CREATE TABLE used_states (
    state       text PRIMARY KEY,
    expires_at  bigint NOT NULL
);
CREATE INDEX used_states_expiry ON used_states (expires_at);

-- Logins waiting for their second factor (any replica may show the code page or take the
-- code), until they expire.
CREATE TABLE pending_logins (
    id          text PRIMARY KEY,
    record      bytea NOT NULL,
    expires_at  bigint NOT NULL
);
CREATE INDEX pending_logins_expiry ON pending_logins (expires_at);
