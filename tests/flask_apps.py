"""A Flask app for the black-box tests (``serve("flask_apps:app")``)."""

from flask import Flask, Response

app = Flask(__name__)


@app.route("/stream")
def stream():
    def numbers():
        for i in range(3):
            yield "%d\n" % i
    return Response(numbers(), mimetype="text/plain")


@app.route("/fixed")
def fixed():
    return "fixed"
