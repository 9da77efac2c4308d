\set base random(0, 999)
\set idb random(1, 1000000000000)
SELECT version_key, version FROM pgx.steadfast_versions WHERE version_key = ANY(ARRAY(SELECT 'k'||(:client_id*250+(:base+g*7)%250) FROM generate_series(1,150) g));
BEGIN;
SELECT id FROM pgx.steadfast_processed WHERE id = ANY(ARRAY(SELECT 'i'||(:idb::bigint+g) FROM generate_series(1,150) g));
SELECT version_key, version FROM pgx.steadfast_versions WHERE version_key = ANY(ARRAY(SELECT 'k'||(:client_id*250+(:base+g*7)%250) FROM generate_series(1,150) g)) ORDER BY version_key FOR UPDATE;
SELECT fence_key, token FROM pgx.steadfast_fences WHERE fence_key = ANY(ARRAY(SELECT 'k'||(:client_id*250+(:base+g*7)%250) FROM generate_series(1,150) g)) ORDER BY fence_key FOR UPDATE;
INSERT INTO pgx.effects SELECT 'i'||(:idb::bigint+g), 'k'||(:client_id*250+(:base+g*7)%250), 5, :idb::bigint FROM generate_series(1,150) g;
INSERT INTO pgx.balances SELECT 'k'||(:client_id*250+(:base+g*7)%250), 5, :idb::bigint FROM generate_series(1,150) g ON CONFLICT (account) DO UPDATE SET balance = pgx.balances.balance + EXCLUDED.balance, version = GREATEST(pgx.balances.version, EXCLUDED.version);
WITH f AS (INSERT INTO pgx.steadfast_fences AS f (fence_key, token) SELECT 'k'||(:client_id*250+(:base+g*7)%250), :idb::bigint FROM generate_series(1,150) g ON CONFLICT (fence_key) DO UPDATE SET token = EXCLUDED.token WHERE f.token <= EXCLUDED.token RETURNING 1),
 i AS (INSERT INTO pgx.steadfast_processed (id) SELECT 'i'||(:idb::bigint+g) FROM generate_series(1,150) g ON CONFLICT DO NOTHING RETURNING 1),
 v AS (INSERT INTO pgx.steadfast_versions AS v (version_key, version) SELECT 'k'||(:client_id*250+(:base+g*7)%250), :idb::bigint FROM generate_series(1,150) g ON CONFLICT (version_key) DO UPDATE SET version = EXCLUDED.version WHERE v.version < EXCLUDED.version RETURNING 1)
SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM i), (SELECT count(*) FROM v);
COMMIT;
