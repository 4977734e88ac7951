from django.urls import path

from . import views

app_name = "notes"
urlpatterns = [
    path("", views.index, name="index"),
    path("api/notes", views.api_notes, name="api"),
    path("healthz", views.healthz, name="healthz"),
]
