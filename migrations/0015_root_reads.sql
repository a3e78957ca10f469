-- A root image streamed over NBD (issue 20): per boot, the root image's
-- export (its sha256), the bytes the machine read over NBD for it (root and
-- hash tree; added up by the ledger writer as connections report), and the
-- verification failures the machine reported (dm-verity found a block that
-- does not match the root hash). NULL / 0 for boots without a root image.
ALTER TABLE boots ADD COLUMN root_export TEXT;
ALTER TABLE boots ADD COLUMN root_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE boots ADD COLUMN verify_failures INTEGER NOT NULL DEFAULT 0;
