"""The sandbox's one error type, kept apart so the runner and the control API can share it."""


class SandboxError(RuntimeError):
    """The sandbox cannot be built, started or reconfigured; the message is one line for the CLI."""


class UnsupportedFaultError(SandboxError):
    """A fault mode this peer cannot play (the processor's modes on the Trip service)."""
