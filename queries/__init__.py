"""Reading the lake: DuckDB views that never show a deleted trip, named queries, exports."""
from .connection import LakeConnection, connect

__all__ = ["connect", "LakeConnection"]
