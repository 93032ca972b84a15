"""Policy files: YAML -> typed specs (loader, schema), and transactional reload."""
