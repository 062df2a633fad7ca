-- Read models of the ledger, all derived from the event log and rebuildable from it.
-- One row per projector: the log position its view includes. A view's writes and its
-- checkpoint change in the same transaction. error/error_position remember why a projector
-- stopped (an event it cannot apply), for operators in other processes.
CREATE TABLE {{schema}}.checkpoints (
    name            text        NOT NULL PRIMARY KEY,
    position        bigint      NOT NULL CHECK (position >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    error           text        NOT NULL DEFAULT '',
    error_position  bigint      NOT NULL DEFAULT 0
);

-- accounts.v1: the current balances of every account.
CREATE TABLE {{schema}}.balances (
    account_id       text        NOT NULL PRIMARY KEY,
    asset_code       text        NOT NULL,
    asset_scale      smallint    NOT NULL,
    kind             text        NOT NULL,
    status           text        NOT NULL,
    credit_limit     bigint      NOT NULL,
    posted           bigint      NOT NULL,
    held             bigint      NOT NULL,
    open_holds       bigint      NOT NULL,
    position         bigint      NOT NULL,
    opened_position  bigint      NOT NULL,
    opened_at        timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

-- accounts.v1: one line per posting or hold change, with the balances after it, so the
-- balance as of any point is the last line at or before it.
CREATE TABLE {{schema}}.history (
    account_id    text        NOT NULL,
    position      bigint      NOT NULL,
    payment_id    text        NOT NULL,
    kind          text        NOT NULL,
    amount        bigint      NOT NULL,
    asset_code    text        NOT NULL,
    asset_scale   smallint    NOT NULL,
    posted_after  bigint      NOT NULL,
    held_after    bigint      NOT NULL,
    recorded_at   timestamptz NOT NULL,
    PRIMARY KEY (account_id, position)
);

-- payments.v1: every payment's state and amounts.
CREATE TABLE {{schema}}.payments (
    payment_id  text        NOT NULL PRIMARY KEY,
    kind        text        NOT NULL,
    status      text        NOT NULL,
    legs        jsonb       NOT NULL,
    reference   text        NOT NULL,
    metadata    jsonb       NOT NULL,
    authorised  bigint      NOT NULL,
    captured    bigint      NOT NULL,
    refunded    bigint      NOT NULL,
    released    bigint      NOT NULL,
    expires_at  timestamptz,
    position    bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
