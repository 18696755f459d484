"""Reports: the JSON document a certification run produces, written atomically."""
