-- Machine matching: a group may claim machines by a label selector, and a
-- machine's group is either assigned by an operator or computed.
--
-- groups.selector: the canonical selector text (NULL: the group claims no
-- machine by its labels; members are only those assigned to it).
-- machines.group_assigned: 1 when an operator assigned group_name (it beats
-- every selector); 0 when group_name is computed from the selectors (the
-- server keeps it current; its in-memory inventory is what boots read).
ALTER TABLE groups ADD COLUMN selector TEXT;
ALTER TABLE groups ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN group_assigned INTEGER NOT NULL DEFAULT 0
    CHECK (group_assigned IN (0, 1));

-- Before selectors, a group other than default could only have been set on
-- purpose: keep those machines where they are.
UPDATE machines SET group_assigned = 1 WHERE group_name <> 'default';
