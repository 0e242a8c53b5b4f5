"""`python -m services.connections`: serve the connections service with settings from the environment."""

from services.connections.app import create_app
from services.connections.settings import ConnectionsSettings
from services.runtime.serve import serve

serve(create_app, ConnectionsSettings)
