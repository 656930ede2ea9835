"""The model: the network, its checkpoint file, and how commands name the model they use."""
