"""The HTTP API: the app factory (`gateway.api.app.create_app`) and `gateway.api.server`."""
