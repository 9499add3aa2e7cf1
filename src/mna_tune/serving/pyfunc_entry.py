"""MLflow "models from code" entry: the registered pyfunc model is this file plus the
adapter and serving_config.json artifacts (no pickled objects)."""

import mlflow

from mna_tune.serving.pyfunc import AdapterChatModel

mlflow.models.set_model(AdapterChatModel())
