"""The shared core of the service: settings, database, tables, blobs, file formats, job state.

Both the API (``spottune.app``) and the worker (``spottune.worker``) build on it; it imports
nothing of either, and no torch.
"""
