"""Every path, URL and storage format of the pipeline."""
