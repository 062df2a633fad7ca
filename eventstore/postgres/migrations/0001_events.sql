-- The global event log. Positions are assigned by the appender while it holds the
-- schema's append lock (see store.go), so they are gap-free and follow commit order; there
-- is deliberately no sequence, whose values commit out of order.
CREATE TABLE {{schema}}.events (
    position        bigint      NOT NULL,
    -- COLLATE "C": stream names compare as bytes, which is all an identifier needs, and
    -- the index on (stream, stream_version) then uses memcmp instead of the locale.
    stream          text        COLLATE "C" NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    data            bytea       NOT NULL,
    correlation_id  text        NOT NULL DEFAULT '',
    causation_id    text        NOT NULL DEFAULT '',
    actor           text        NOT NULL DEFAULT '',
    traceparent     text        NOT NULL DEFAULT '',
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (position),
    -- Second line of defence behind the append lock: a writer that skipped the lock still
    -- cannot give two events the same stream version.
    CONSTRAINT events_stream_version_key UNIQUE (stream, stream_version),
    CONSTRAINT events_position_positive CHECK (position >= 1),
    CONSTRAINT events_stream_version_positive CHECK (stream_version >= 1),
    CONSTRAINT events_hash_size CHECK (octet_length(prev_hash) = 32 AND octet_length(hash) = 32)
);

-- Append-only, enforced by the database whatever the client: row triggers refuse UPDATE and
-- DELETE, a statement trigger refuses TRUNCATE. Only a superuser who switches
-- session_replication_role or disables the triggers can get past them, and the hash chain
-- exposes what they change.
CREATE FUNCTION {{schema}}.events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'securepay events are append-only: % refused on %.%', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON {{schema}}.events
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.events_refuse_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON {{schema}}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.events_refuse_change();

-- The application role writes as itself (SET LOCAL ROLE in every write transaction) and may
-- only read and insert events. The role is cluster-wide; the grants are per schema.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {{app_role_literal}}) THEN
        CREATE ROLE {{app_role}} NOLOGIN;
    END IF;
END;
$$;

GRANT USAGE ON SCHEMA {{schema}} TO {{app_role}};
GRANT SELECT ON {{schema}}.schema_migrations TO {{app_role}};
GRANT SELECT, INSERT ON {{schema}}.events TO {{app_role}};
