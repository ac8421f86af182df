-- Runs once, when the postgres_data volume is empty, as POSTGRES_USER in the POSTGRES_DB
-- (`dagster`) database. MLflow's metadata gets its own database on the same server.
CREATE DATABASE mlflow;
