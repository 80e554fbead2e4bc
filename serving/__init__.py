"""Serving: the HTTP API and web page that count books with the champion model, and the
interactive ML backend that answers Label Studio's clicks (:mod:`serving.ml_backend`)."""
