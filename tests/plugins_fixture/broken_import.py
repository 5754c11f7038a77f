"""A plugin whose dependency is missing: importing it fails."""

raise ImportError("the frobnicator library is not installed")
