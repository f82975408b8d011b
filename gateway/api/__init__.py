"""The HTTP API: FastAPI app factory (`gateway.api.app.create_app`) and server (`gateway.api.server`)."""
