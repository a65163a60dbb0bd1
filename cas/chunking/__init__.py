"""Content-defined chunking, in process and in a helper process."""
