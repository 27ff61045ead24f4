"""``python -m crm_automation``."""

from crm_automation.cli import main

main()
