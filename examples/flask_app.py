"""
A Flask application served by yimmo-wsgi::

    pip install flask
    yimmo-wsgi examples.flask_app:app
"""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def index():
    return "Hello from Flask on yimmo-twisted!\n"


@app.post("/echo")
def echo():
    """Echo a JSON body, or the form fields of a form post."""
    if request.is_json:
        return jsonify(request.get_json())
    return jsonify(request.form.to_dict())


@app.get("/headers")
def headers():
    return jsonify(dict(request.headers))
