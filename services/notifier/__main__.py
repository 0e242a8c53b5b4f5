"""`python -m services.notifier`: serve the notifier service with settings from the environment."""

from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings
from services.runtime.serve import serve

serve(create_app, NotifierSettings)
