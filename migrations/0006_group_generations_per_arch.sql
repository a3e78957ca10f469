-- A group holds one generation per architecture: an arm64 machine and an
-- x86_64 machine of the same group each boot the group's generation for
-- their own architecture. groups.stream/generation stays the pointer set
-- last (what the API has always shown); this table holds one per arch.
CREATE TABLE group_generations (
    group_name TEXT NOT NULL,
    arch       TEXT NOT NULL,                -- the image's: x86_64, arm64
    stream     TEXT NOT NULL,
    generation INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (group_name, arch)
);

INSERT INTO group_generations (group_name, arch, stream, generation, updated_ms)
SELECT g.name, i.arch, g.stream, g.generation, g.updated_ms
FROM groups g
JOIN generations n ON n.stream = g.stream AND n.number = g.generation
JOIN images i ON i.digest = n.image;
