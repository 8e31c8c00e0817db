"""Pydantic request and response bodies of the REST API."""
