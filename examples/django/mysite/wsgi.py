"""
The project's WSGI callable, ``application``: what ``yimmo-wsgi mysite.wsgi:application``
serves.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()
