"""HTTP routes (filled in by the domain's work)."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1")
