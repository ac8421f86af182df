"""Stage logic that the Dagster assets, the bench and the tests share: inputs from the lake and the
registry in, results out, no Dagster import."""
