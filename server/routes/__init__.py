"""Feature route modules; each exposes `setup_routes(app)`."""
