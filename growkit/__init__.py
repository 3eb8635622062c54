"""growkit: grow a small pretrained transformer into a larger one."""
