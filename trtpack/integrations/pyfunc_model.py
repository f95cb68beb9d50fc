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
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        import trtpack
        from trtpack.integrations.predict import predict

        # a multi-entry pack (format 1.4): params={"entry_point": "decode"}; state is shared
        name = (params or {}).get("entry_point")
        try:
            pack = self.pack[name] if name else self.pack
        except trtpack.ManifestError as e:  # no such entry point: the client's fault, a 400
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from e
        try:
            return predict(pack, model_input)
        except trtpack.InputMismatchError as e:  # the client's fault: a 400 with trtpack's words
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from e


mlflow.models.set_model(TrtpackModel())
