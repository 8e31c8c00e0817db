"""The Python client of the spottune service (torch-free: httpx, pydantic, tqdm).

    from spottune.client import Client
    client = Client("https://spottune.example.org", api_key="...")  # or SPOTTUNE_URL / _API_KEY
"""

from spottune.client.client import Client
from spottune.client.errors import ApiError, ConnectionFailed, JobFailed, SpottuneError, WaitTimeout
from spottune.client.types import Delivery, Job, Mask, Model, Policy, Progress, Scan, Webhook
from spottune.signing import SignatureError
from spottune.signing import verify as verify_signature

__all__ = [
    "ApiError",
    "Client",
    "ConnectionFailed",
    "Delivery",
    "Job",
    "JobFailed",
    "Mask",
    "Model",
    "Policy",
    "Progress",
    "Scan",
    "SignatureError",
    "SpottuneError",
    "WaitTimeout",
    "Webhook",
    "verify_signature",
]
