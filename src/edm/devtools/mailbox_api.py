"""Demo mailbox (demo/development only): what the local SMTP sink captured."""

from fastapi import APIRouter

router = APIRouter()
