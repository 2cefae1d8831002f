"""Generated code of ``kingest/options/v1/options.proto`` (``python -m kingest.schema.codegen``)."""
