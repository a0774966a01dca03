-- performance: A/B experiments, the exposures of their subjects and recorded outcomes.

CREATE TABLE experiments (
    id         uuid PRIMARY KEY,
    scope      text NOT NULL,
    status     text NOT NULL CHECK (status IN ('draft', 'running', 'stopped')),
    -- The encoded omni.performance.v1.Experiment definition (variants, metric, sources).
    body       bytea NOT NULL,
    started_at timestamptz,
    stopped_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX experiments_scope ON experiments (scope, id);

-- A subject saw its variant; the first exposure counts.
CREATE TABLE exposures (
    experiment_id uuid NOT NULL REFERENCES experiments (id),
    subject_id    text NOT NULL,
    variant       text NOT NULL,
    channel_id    text NOT NULL DEFAULT '',
    exposed_at    timestamptz NOT NULL,
    PRIMARY KEY (experiment_id, subject_id)
);

-- A subject's outcome, for experiments whose outcomes are recorded; the latest replaces.
CREATE TABLE outcomes (
    experiment_id uuid NOT NULL REFERENCES experiments (id),
    subject_id    text NOT NULL,
    variant       text NOT NULL,
    converted     boolean NOT NULL,
    -- Minor units, for order-value experiments.
    order_value   bigint,
    occurred_at   timestamptz NOT NULL,
    PRIMARY KEY (experiment_id, subject_id)
);
