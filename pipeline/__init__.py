"""Apache Beam preprocessing: Quick Draw ndjson / sketch-rnn npz -> stroke-5 TFRecords."""
