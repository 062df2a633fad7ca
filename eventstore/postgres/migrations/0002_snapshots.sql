-- Derived, rebuildable aggregate snapshots: one row per stream, the highest version wins.
CREATE TABLE {{schema}}.snapshots (
    stream      text        COLLATE "C" NOT NULL,
    version     bigint      NOT NULL,
    schema_name text        NOT NULL,
    state       bytea       NOT NULL,
    saved_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_pkey PRIMARY KEY (stream),
    CONSTRAINT snapshots_version_positive CHECK (version >= 1)
);

-- Snapshots are a cache: the application may replace them, never the events.
GRANT SELECT, INSERT, UPDATE ON {{schema}}.snapshots TO {{app_role}};
