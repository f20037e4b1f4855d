"""Shim so ``bentoml serve service.http_service:Classifier`` keeps working: the service lives in
``service.http.service``."""

from service.http.service import Classifier

__all__ = ["Classifier"]
