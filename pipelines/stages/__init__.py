"""One runner per stage of the graph: it reads its inputs from the lake, computes, writes the week's
partitions and returns a typed summary. The Dagster asset, the bench and the tests call the same
runner; an asset only passes resources in and metadata out. No Dagster import here."""
