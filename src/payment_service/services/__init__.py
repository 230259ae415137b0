"""Business rules. Services decide and own transactions; they never see httpx or HTTP."""
