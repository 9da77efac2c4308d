-- A key's last applied version and the largest fencing token accepted for it share one row
-- of `steadfast_versions`: the once-only path checks and records both, so a record costs one
-- row lock and one upsert there instead of two of each. A key fenced before any version of
-- it was applied has a row whose version is the smallest bigint, which stands for "none":
-- every version is newer, so the workers of the release before this one (which read and
-- compare `version` as before, and know nothing of `token`) keep running on these rows.
ALTER TABLE steadfast_versions ADD COLUMN token bigint;

-- The tokens accepted so far move over: onto the key's version row, or a row of their own.
UPDATE steadfast_versions
    SET token = (SELECT token FROM steadfast_fences WHERE fence_key = version_key)
    WHERE version_key IN (SELECT fence_key FROM steadfast_fences);
INSERT INTO steadfast_versions (version_key, version, token)
    SELECT fence_key, -9223372036854775808, token FROM steadfast_fences
    WHERE fence_key NOT IN (SELECT version_key FROM steadfast_versions);

-- `steadfast_fences` is no longer read or written by this release. It stays for the workers
-- of the release before, which go on writing their tokens there during a rolling upgrade
-- (where upgraded workers do not see them): fencing across workers holds again once every
-- worker is upgraded.
COMMENT ON TABLE steadfast_fences IS 'unused since migration 2: tokens live in steadfast_versions';
