"""`ophora curate`: narrated surgical videos -> clip/instruction pairs (segmentation, filters, refining, privacy)."""
