-- Whether Secure Boot was on, as the booted OS said when it confirmed (the
-- phone-home field `secureboot`, 1 or 0). A claim like `reported_hostname`:
-- NULL when the OS said nothing. Each boot keeps its own; a machine keeps
-- what its latest confirmed boot said, for `machines show` and the list.
ALTER TABLE boots ADD COLUMN secure_boot BOOLEAN;
ALTER TABLE machines ADD COLUMN secure_boot BOOLEAN;
