"""The only room that talks to MLflow: runs, datasets, lineage, versions, aliases, the gate, audit."""
