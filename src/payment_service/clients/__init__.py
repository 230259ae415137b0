"""Outbound calls (Trip service, payment gateway). Transport failures become domain errors."""
