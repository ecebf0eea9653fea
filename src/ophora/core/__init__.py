"""Shared infrastructure below the stages: errors, files, media, ranks and devices, models, tables, formats, config."""
