"""Request and response shapes (Pydantic); routers validate with these."""
