"""Serving inference requests straight from uvicorn's connections (see `protocol`)."""
