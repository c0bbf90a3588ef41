"""The `cegraph` command line: the front door over flows, storage and the library."""
