"""A minimal Django project in one module: settings configured here, one URL.

``benchmarks.django_app:application`` is its WSGI application, the django scenario of
``run.py``.  No installed apps, no database, one middleware: the cost measured is
Django's request/response cycle and URL resolution.
"""

import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],  # wrk sends Host: 127.0.0.1:PORT
    ROOT_URLCONF=__name__,
    SECRET_KEY="benchmark-only",
    # Only CommonMiddleware (in every startproject's list): it sets the Content-Length that a
    # bare HttpResponse lacks, without which servers chunk the body (and uWSGI's keep-alive
    # never ends the response).
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()


def hello(request):
    return HttpResponse("Hello, World!")


urlpatterns = [path("", hello)]

from django.core.wsgi import get_wsgi_application  # noqa: E402  (needs the settings above)

application = get_wsgi_application()
