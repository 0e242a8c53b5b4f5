"""`python -m services.invitations`: serve the invitations service with settings from the environment."""

from services.invitations.app import create_app
from services.invitations.settings import InvitationsSettings
from services.runtime.serve import serve

serve(create_app, InvitationsSettings)
