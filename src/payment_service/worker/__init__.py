"""Background work: the outbox dispatcher that delivers notifications (SPEC §6)."""
