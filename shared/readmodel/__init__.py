"""The read model: pure projections (views folded from events) and the SQL read store.

Lives in `shared` because two services use it: the projector writes it, the query service
reads it (and folds events for "as of version N" queries with the same pure functions).
"""
