"""Access control: who may call, on which namespace, to do what."""
