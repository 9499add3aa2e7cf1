"""Data rooms: readers, scoring, filters, dedup and split. Nothing heavy is imported here
(no torch, transformers or mlflow) so the data stages start in well under a second."""
