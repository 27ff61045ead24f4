"""The activity log: schema, migrations and the repository (the only SQL)."""
