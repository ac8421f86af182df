"""The registered model's code (MLflow models-from-code): MLflow runs this file to build the model.

`log_recommender` logs this path, not a pickled object, so nothing in the registry is deserialized
with pickle: the model is this code (copied into the model with the `pipelines` package), the
bundle's boosters as LightGBM text and its tables as Parquet.
"""

from mlflow.models import set_model

from pipelines.model.bundle import RecommenderModel

set_model(RecommenderModel())
