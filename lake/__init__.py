"""The lake: projection of the log into Parquet plus the catalog that says which files are live."""
