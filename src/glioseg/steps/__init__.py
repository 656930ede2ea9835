"""The data stages, one module each (download ... augment): read inputs, call ``glioseg.data``, write outputs."""
