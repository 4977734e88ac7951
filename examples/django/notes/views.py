"""
Notes, kept in memory: a page with a form (CSRF-protected, as every POST from a page
should be) and a JSON API (csrf_exempt: its clients send JSON, not cookies).
"""

import json
import threading

from django.http import HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

# The server runs views on several worker threads at once: the list is locked.
_lock = threading.Lock()
_notes: list = []


def _add(text):
    with _lock:
        note = {"id": len(_notes) + 1, "text": text}
        _notes.append(note)
    return note


def _all():
    with _lock:
        return list(_notes)


@require_http_methods(["GET", "POST"])
def index(request):
    if request.method == "POST":
        text = request.POST.get("text", "").strip()
        if not text:
            return HttpResponseBadRequest("a note, please")
        _add(text)
        return redirect("notes:index")  # post/redirect/get: a reload does not post again
    return render(request, "notes/index.html", {
        "notes": _all(), "server": request.META.get("SERVER_SOFTWARE", "")})


@csrf_exempt
@require_http_methods(["GET", "POST"])
def api_notes(request):
    if request.method == "POST":
        try:
            data = json.loads(request.body)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            return JsonResponse({"error": 'expected a JSON object with a "text" string'},
                                status=400)
        return JsonResponse(_add(data["text"]), status=201)
    return JsonResponse({"notes": _all()})


@require_GET
def healthz(request):
    return HttpResponse("ok\n", content_type="text/plain")
