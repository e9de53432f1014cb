"""tf.data input, tf.distribute training, checkpoints and SavedModel export."""
