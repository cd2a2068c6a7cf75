"""Code shared by every service: settings, topic names, Avro codec, metrics, Redis keys, local stack."""
