"""A Flask hello route: ``benchmarks.flask_app:app``, the flask scenario of ``run.py``."""

from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello():
    return "Hello, World!"
