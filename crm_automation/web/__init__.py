"""The web app, ``crm-automation serve`` (issue #19)."""
