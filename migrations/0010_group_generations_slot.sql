-- group_generations holds one generation per slot (x86_64, arm64,
-- x86_64/installer), not per image architecture: the column says so.
-- (Migration 0006 is kept as it first landed; see store::repair_checksums.)
ALTER TABLE group_generations RENAME COLUMN arch TO slot;
