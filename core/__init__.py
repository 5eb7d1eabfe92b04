"""The stmod core: value types, protocols, errors, config, the ST-Layout engine and the CLI."""
