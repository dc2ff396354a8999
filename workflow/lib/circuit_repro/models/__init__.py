"""Models from the registry: ``registry`` (config/models.yaml), ``fetch`` (raw weights),
``prepare`` (safetensors + tokenizer), ``load`` (a LoadedModel with a bridge) and
``tiny`` (tiny random models of five architectures with an offline tokenizer)."""
