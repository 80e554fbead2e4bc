"""Serving: the HTTP API and web page that count books with the champion model."""
