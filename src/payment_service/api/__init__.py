"""HTTP routers: thin; they validate, call a service, and shape the answer."""
