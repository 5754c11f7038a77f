"""The file-queue protocol: layout, names, claims, completion, watching and dispatch."""
