//! kvtier engine adapter: the reference model and the KV cache connector.
