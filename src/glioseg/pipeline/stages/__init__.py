"""One module per pipeline stage, named as in dvc.yaml: it reads its inputs, calls the library, writes outputs."""
