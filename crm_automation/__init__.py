"""crm-automation: a shared spreadsheet as customer master, a mailbox as activity log, campaigns sent once."""
