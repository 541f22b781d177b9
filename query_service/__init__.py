"""Query service: serves the read models over HTTP."""
