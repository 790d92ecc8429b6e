"""Small tensor operations shared by the models: attention, rotary embeddings, norms."""
