-- A key's last applied version and the largest fencing token accepted for it share one row
-- of `steadfast_versions`: the once-only path checks and records both, so a record costs one
-- row lock and one upsert there instead of two of each. A row may hold a token without a
-- version (a key fenced before any version of it was applied), or a version without a token.
ALTER TABLE steadfast_versions ALTER COLUMN version DROP NOT NULL;
ALTER TABLE steadfast_versions ADD COLUMN token bigint;

-- The tokens accepted so far move over: onto the key's version row, or a row of their own.
UPDATE steadfast_versions
    SET token = (SELECT token FROM steadfast_fences WHERE fence_key = version_key)
    WHERE version_key IN (SELECT fence_key FROM steadfast_fences);
INSERT INTO steadfast_versions (version_key, token)
    SELECT fence_key, token FROM steadfast_fences
    WHERE fence_key NOT IN (SELECT version_key FROM steadfast_versions);

-- `steadfast_fences` is no longer written or read. It stays, so that workers of the previous
-- release keep running during a rolling upgrade (tokens they accept there are not seen by the
-- workers already upgraded: finish the upgrade before relying on fencing across workers).
COMMENT ON TABLE steadfast_fences IS 'unused since migration 2: tokens live in steadfast_versions';
