"""``import trtpack.mlflow``: the MLflow integration (see trtpack/integrations/mlflow.py)."""

from .integrations.mlflow import load_model, log_model, model_metadata, signature

__all__ = ["load_model", "log_model", "model_metadata", "signature"]
