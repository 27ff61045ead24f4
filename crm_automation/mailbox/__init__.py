"""Mailbox sources: Maildir and IMAP."""
