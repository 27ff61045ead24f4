"""Outbound transports: outbox (.eml files) and SMTP."""
