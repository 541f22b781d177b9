"""The read model: the read pipeline (records and stored rows to readable events, one rule for
an unreadable one), pure projections (views folded from events) and the SQL read store.

Lives in `shared` because two services use it: the projector writes it, the query service
reads it (and folds events for "as of version N" queries with the same pure functions).
"""
