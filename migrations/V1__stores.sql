-- The tables of the Postgres stores. Applied with `search_path` set to the stores' schema,
-- so no name here carries a schema qualifier. Every lease is measured by the database clock.

-- One row per lock key; the row stays after a release so the key's token keeps growing.
-- `expires_at` is NULL while nobody holds the lock.
CREATE TABLE steadfast_locks (
    lock_key   text PRIMARY KEY,
    token      bigint NOT NULL,
    expires_at timestamptz
);

-- The largest fencing token accepted per key.
CREATE TABLE steadfast_fences (
    fence_key text PRIMARY KEY,
    token     bigint NOT NULL
);

-- Two-phase deduplication: a reservation (`completed` false, held by `owner` until
-- `expires_at`) or a completion (remembered until `expires_at`).
CREATE TABLE steadfast_dedup (
    id         text PRIMARY KEY,
    owner      text,
    completed  boolean NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The last applied version per key.
CREATE TABLE steadfast_versions (
    version_key text PRIMARY KEY,
    version     bigint NOT NULL
);

-- Message ids applied by the transactional path, recorded in the handler's transaction.
CREATE TABLE steadfast_processed (
    id           text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
