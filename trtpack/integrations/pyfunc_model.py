"""The MLflow pyfunc model of a trtpack pack, logged "from code" by trtpack.mlflow.log_model:
MLflow runs this file to build the model, so nothing of it is pickled."""

from __future__ import annotations

import mlflow
import mlflow.pyfunc


class TrtpackModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """predict({"x": array, ...}) or predict(array) -> {output name: array} (or one array)."""

    def load_context(self, context):  # MLflow reads these signatures: no type hints
        import trtpack

        self.pack = trtpack.load(context.artifacts["pack"])

    def predict(self, context, model_input, params=None):
        from trtpack.integrations.predict import predict

        return predict(self.pack, model_input)


mlflow.models.set_model(TrtpackModel())
