\set base random(0, 999)
\set idb random(1, 1000000000000)
SELECT key, version FROM pgx.keys WHERE key = ANY(ARRAY(SELECT 'k'||(:client_id*250+(:base+g*7)%250) FROM generate_series(1,150) g));
BEGIN;
SELECT id FROM pgx.steadfast_processed WHERE id = ANY(ARRAY(SELECT 'i'||(:idb::bigint+g) FROM generate_series(1,150) g));
SELECT key, version, token FROM pgx.keys WHERE key = ANY(ARRAY(SELECT 'k'||(:client_id*250+(:base+g*7)%250) FROM generate_series(1,150) g)) ORDER BY key FOR UPDATE;
INSERT INTO pgx.effects SELECT 'i'||(:idb::bigint+g), 'k'||(:client_id*250+(:base+g*7)%250), 5, :idb::bigint FROM generate_series(1,150) g;
INSERT INTO pgx.balances SELECT 'k'||(:client_id*250+(:base+g*7)%250), 5, :idb::bigint FROM generate_series(1,150) g ON CONFLICT (account) DO UPDATE SET balance = pgx.balances.balance + EXCLUDED.balance, version = GREATEST(pgx.balances.version, EXCLUDED.version);
WITH k AS (INSERT INTO pgx.keys AS k (key, version, token) SELECT 'k'||(:client_id*250+(:base+g*7)%250), :idb::bigint, :idb::bigint FROM generate_series(1,150) g ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version, token = EXCLUDED.token WHERE k.token <= EXCLUDED.token AND k.version < EXCLUDED.version RETURNING 1),
 i AS (INSERT INTO pgx.steadfast_processed (id) SELECT 'i'||(:idb::bigint+g) FROM generate_series(1,150) g ON CONFLICT DO NOTHING RETURNING 1)
SELECT (SELECT count(*) FROM k), (SELECT count(*) FROM i);
COMMIT;
