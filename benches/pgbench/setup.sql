-- Tables for the pgbench model of one once-only batch (see README.md here).
DROP SCHEMA IF EXISTS pgx CASCADE;
CREATE SCHEMA pgx;
CREATE TABLE pgx.steadfast_fences (fence_key text PRIMARY KEY, token bigint NOT NULL);
CREATE TABLE pgx.steadfast_versions (version_key text PRIMARY KEY, version bigint NOT NULL);
CREATE TABLE pgx.steadfast_processed (id text PRIMARY KEY, processed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE pgx.keys (key text PRIMARY KEY, version bigint, token bigint);
CREATE TABLE pgx.effects (txn text, account text, amount bigint, version bigint);
CREATE TABLE pgx.balances (account text PRIMARY KEY, balance bigint, version bigint);
