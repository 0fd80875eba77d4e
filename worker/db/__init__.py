"""VCL database layer: models of vcl.sql, the engine, the store (vcld's DB logic) and seeding."""
