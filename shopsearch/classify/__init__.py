"""Category tagging: classifier heads over embeddings (optionally a fine-tuned backbone),
used to tag uncategorised products and to route searches to the query's category."""
